"""docs/metrics.md is the exported metric set: scraped from a live EPP after real traffic.

Real Envoy (``kvroute serve``'s generated config), the real EPP and two ``kvroute_sim`` servers on
loopback; the EPP's ``/metrics`` is fetched over HTTP and parsed with prometheus_client's text
parser. Names with a ``flow_control_`` infix belong to the doc's flow-control section (filled by
the flow-control module) and are compared only against that section.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kvroute.config.epp_config import KVROUTE_DEFAULT_CONFIG_TEXT
from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
REQUEST_LABELS = ("model_name", "target_model_name", "fairness_id", "priority")
_ROW = re.compile(r"^\|\s*`([a-z0-9_:]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|")


@dataclass(frozen=True)
class Row:
    type: str
    labels: frozenset[str]
    flow_control: bool


def documented(text: str) -> dict[str, Row]:
    """Table rows of docs/metrics.md: name -> type, label names, section."""
    rows: dict[str, Row] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
        m = _ROW.match(line)
        if m is None:
            continue
        labels: set[str] = set()
        for part in (p.strip() for p in m.group(3).split(",")):
            if part == "R":
                labels.update(REQUEST_LABELS)
            elif part and part != "—":
                labels.add(part)
        assert m.group(1) not in rows, f"{m.group(1)} documented twice"
        rows[m.group(1)] = Row(m.group(2), frozenset(labels), section == "flow control")
    return rows


def exported(text: str) -> dict[str, tuple[str, set[str] | None]]:
    """Exposition name -> (type, label names of its series, None when it has no series)."""
    out: dict[str, tuple[str, set[str] | None]] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name
        if fam.type in ("gauge", "unknown") and name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters and histograms
        if fam.type == "counter":
            name += "_total"
        labels: set[str] | None = None
        for sample in fam.samples:
            labels = (labels or set()) | (set(sample.labels) - {"le"})
        out[name] = (fam.type, labels)
    return out


def _config_with_predictor() -> str:
    """The default profile plus a ``predicted-latency-producer`` (warm after one response), so
    the conditional ``kvroute_pool_predicted_ttft_headroom_seconds`` is exported too."""
    doc = yaml.safe_load(KVROUTE_DEFAULT_CONFIG_TEXT)
    producer = {"type": "predicted-latency-producer", "parameters": {"warmupSamples": 1}}
    doc["plugins"].append(producer)
    return str(yaml.safe_dump(doc, sort_keys=False))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    tmp = tmp_path_factory.mktemp("metrics-doc")
    async with (
        SimCluster(2, profile="tiny", model="base") as sims,
        Gateway(sims.urls, config_text=_config_with_predictor(), log_dir=tmp) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30.0) as client,
    ):
        body = {"model": "base", "prompt": "hello there", "max_tokens": 4}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        assert (await client.post("/v1/completions", json=stream)).status_code == 200
        slo = {"x-llm-d-slo-ttft-ms": "800"}
        for _ in range(3):  # the predictor learns from the first; the later ones add headroom
            r = await client.post("/v1/completions", json=body, headers=slo)
            assert r.status_code == 200
        bad = await client.post("/v1/completions", json={"prompt": "no model"})
        assert bad.status_code == 400
        yield (await client.get(f"http://127.0.0.1:{gw.epp.ports.metrics}/metrics")).text


async def test_exported_names_equal_the_documented_table(scraped: str) -> None:
    doc = documented(DOC.read_text())
    got = exported(scraped)
    plain_doc = {n for n, r in doc.items() if not r.flow_control}
    plain_got = {n for n in got if "flow_control_" not in n}
    assert plain_got - plain_doc == set(), "exported but not in docs/metrics.md"
    assert plain_doc - plain_got == set(), "in docs/metrics.md but not exported"
    flow_got = set(got) - plain_got
    flow_doc = {n for n, r in doc.items() if r.flow_control}
    assert flow_got <= flow_doc, "flow-control names exported but not documented"
    assert any(n.startswith("llm_d_epp_") for n in plain_got)


async def test_types_and_labels_match_the_document(scraped: str) -> None:
    doc = documented(DOC.read_text())
    got = exported(scraped)
    with_series = 0
    for name, (kind, labels) in got.items():
        row = doc[name]
        assert kind == row.type, name
        if labels is None:
            continue
        with_series += 1
        assert labels == set(row.labels), name
    # The traffic above fills the request, pool, scheduler and plugin series of both sets.
    assert with_series >= 35, with_series
