"""The ``tap`` gateway config: the Lua filter's place, the metadata it may read, its clusters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvroute.extproc.tap import TAP_CLUSTER_PREFIX, TAP_METHOD, TAP_NAMESPACE
from kvroute.gateway.bootstrap import EPP_CLUSTER, BootstrapOptions, build_bootstrap
from kvroute.gateway.envoy import find_envoy
from kvroute.gateway.response_tap import lua_source

EPS = (("127.0.0.1", 8001), ("127.0.0.1", 8002))
VARIANTS = {
    "tap": BootstrapOptions(endpoints=EPS, response_processing="tap"),
    "tap-uds": BootstrapOptions(
        endpoints=EPS, response_processing="tap", epp_uds="/tmp/kvroute-validate/epp.sock"
    ),
    "tap-replicas": BootstrapOptions(
        endpoints=EPS,
        response_processing="tap",
        epp_tls=False,
        epp_endpoints=(("127.0.0.1", 9102), ("127.0.0.1", 9202)),
    ),
}


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return cfg


def _clusters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def test_lua_filter_sits_right_before_ext_proc() -> None:
    doc = build_bootstrap(VARIANTS["tap"])
    names = [f["name"] for f in _hcm(doc)["http_filters"]]
    # Encoding runs the list backwards: the tap sees the response after ext_proc released it.
    assert names[-3:] == [
        "kvroute.response_tap",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    (ext_proc,) = [f for f in _hcm(doc)["http_filters"] if f["name"].endswith("ext_proc")]
    cfg = ext_proc["typed_config"]
    assert cfg["processing_mode"]["response_body_mode"] == "NONE"
    assert cfg["processing_mode"]["response_header_mode"] == "SKIP"  # the report carries them
    assert cfg["processing_mode"]["response_trailer_mode"] == "SEND"
    assert cfg["metadata_options"]["receiving_namespaces"]["untyped"] == ["envoy.lb", TAP_NAMESPACE]


def test_other_modes_have_no_tap() -> None:
    for mode in ("full", "light"):
        doc = build_bootstrap(BootstrapOptions(endpoints=EPS, response_processing=mode))
        assert "kvroute.response_tap" not in [f["name"] for f in _hcm(doc)["http_filters"]]
        assert not any(n.startswith(TAP_CLUSTER_PREFIX) for n in _clusters(doc))


def test_one_report_cluster_per_epp_replica() -> None:
    clusters = _clusters(build_bootstrap(VARIANTS["tap-replicas"]))
    for port in (9102, 9202):
        c = clusters[f"{TAP_CLUSTER_PREFIX}{port}"]
        (host,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert host["endpoint"]["address"]["socket_address"]["port_value"] == port
        assert "http2_protocol_options" in json.dumps(c)  # gRPC
    # One EPP on a Unix socket: reports use the ext_proc cluster itself.
    uds = _clusters(build_bootstrap(VARIANTS["tap-uds"]))
    assert not any(n.startswith(TAP_CLUSTER_PREFIX) for n in uds)


def test_lua_reports_to_the_named_method_and_default_cluster() -> None:
    src = lua_source(EPP_CLUSTER)
    assert f'"{TAP_METHOD}"' in src
    assert f'md["cluster"] or "{EPP_CLUSTER}"' in src
    assert "@" not in src.replace('"@', "")  # every placeholder was filled


@pytest.mark.parametrize("name", list(VARIANTS), ids=list(VARIANTS))
def test_envoy_validates_tap_config(name: str, tmp_path: Path) -> None:
    """Envoy's validate mode also compiles the Lua script."""
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(build_bootstrap(VARIANTS[name])))
    proc = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
