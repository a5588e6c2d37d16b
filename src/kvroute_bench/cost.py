"""What a run's output tokens cost on a mixed pool, and TTFT-SLO attainment per class.

Prices: each replica's class (``kvroute_sim`` accelerator) has a price per replica-hour, from
the workload's ``prices`` (``"h100=11.06,l4=0.71"``) or else the class's default in
:data:`kvroute.sdk.ACCELERATOR_CLASSES`. The bench hands both to the router as
the endpoint's pod labels (``kvroute.dev/accelerator``, ``kvroute.dev/cost-per-hour``), exactly
as a Deployment's pod template would carry them.

Three cost figures per run, each in price units per million output tokens emitted in the
measurement window (the output tokens of the requests sent in it, by the replica that served
them; ``docs/benchmarks.md``, "Cost-aware routing over mixed accelerators"):

- ``provisioned``: every replica's price x the window / the window's tokens. With a fixed pool
  and the same traffic this is the same for every policy (routing cannot change the bill of a
  fixed pool); it is shown so that nobody mistakes the others for it.
- ``work`` (the headline): each replica's tokens priced at that replica's cost per token *at
  full use*, ``price / saturated output tokens per second`` of its class on this workload
  (measured by :func:`kvroute_bench.sweep.saturation_probe`). It is what the same work costs on
  a pool sized to it, class by class (an autoscaler per class keeping each Deployment busy):
  the cost of the capacity the routing consumed. Routing changes it by choosing which class
  serves the tokens.
- ``busy``: each replica's price x the seconds it spent stepping in the window. An engine steps
  whenever one request runs, so this is close to ``provisioned`` at any real load; shown because
  it is what "billed while busy" would give, and to show why it is not the headline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kvroute.sdk import ACCELERATOR_CLASSES, ACCELERATOR_LABEL, COST_LABEL, Criticality
from kvroute_bench.metrics import RequestRecord, Slo

# Approximate on-demand list prices per GPU-hour, Google Cloud us-central1 (2024-25):
# a3-highgpu-8g (8 x H100 80GB) ~ $88.49/h -> 11.06 per H100; g2-standard-4 (1 x L4) ~ $0.71/h;
# a2-ultragpu-1g (1 x A100 80GB) ~ $5.07/h. Approximate, not quotes: pass your own prices.
GCP_LIST_PRICES: Mapping[str, float] = {"h100": 11.06, "l4": 0.71, "a100": 5.07}


def parse_prices(spec: str) -> dict[str, float]:
    """``"h100=11.06,l4=0.71"`` -> ``{"h100": 11.06, "l4": 0.71}``; bad input is a ValueError
    naming the item."""
    out: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in ACCELERATOR_CLASSES:
            known = ", ".join(ACCELERATOR_CLASSES)
            raise ValueError(f"bad price item {item!r}: want CLASS=PRICE, CLASS one of {known}")
        try:
            price = float(raw)
        except ValueError:
            price = math.nan
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"bad price in {item!r}: want a non-negative number")
        out[name] = price
    return out


def replica_prices(accelerators: Sequence[str], prices: Mapping[str, float]) -> list[float]:
    """Each replica's price per hour: ``prices`` for its class, else the class's default."""
    return [prices.get(a, ACCELERATOR_CLASSES[a].cost_per_hour) for a in accelerators]


def replica_labels(
    accelerators: Sequence[str], prices: Mapping[str, float]
) -> list[dict[str, str]]:
    """The pod labels each replica's endpoint carries: its class and its price."""
    return [
        {ACCELERATOR_LABEL: a, COST_LABEL: f"{p:g}"}
        for a, p in zip(accelerators, replica_prices(accelerators, prices), strict=True)
    ]


def replica_output_tokens(
    records: Iterable[RequestRecord], window: tuple[float, float], replicas: int
) -> list[int]:
    """Output tokens of the requests *sent* in ``window``, by the replica that served them
    (all their tokens, whenever emitted: the same traffic gives the same total under every
    policy that serves it all, however fast)."""
    t0, t1 = window
    out = [0] * replicas
    for r in records:
        if t0 <= r.sent < t1 and r.replica is not None and not r.failed:
            out[r.replica] += r.output_tokens
    return out


def cost_figures(
    *,
    accelerators: Sequence[str],
    prices: Mapping[str, float],
    capacity_tok_s: Mapping[str, float],
    replica_tokens: Sequence[int],
    replica_busy_s: Sequence[float],
    window_s: float,
) -> dict[str, Any]:
    """The three costs per million output tokens (module docstring) and the token share per
    class. ``replica_tokens``: :func:`replica_output_tokens`; ``replica_busy_s``: seconds each
    replica stepped in the window; ``capacity_tok_s``: saturated output tokens/s of one replica
    of each class."""
    per = replica_prices(accelerators, prices)
    tokens = sum(replica_tokens)
    mtok = tokens / 1e6
    provisioned = sum(per) * window_s / 3600.0
    busy = sum(p * b for p, b in zip(per, replica_busy_s, strict=True)) / 3600.0
    work = 0.0
    by_class: dict[str, int] = {}
    for a, p, n in zip(accelerators, per, replica_tokens, strict=True):
        work += p * n / capacity_tok_s[a] / 3600.0
        by_class[a] = by_class.get(a, 0) + n

    def per_m(dollars: float) -> float:
        return dollars / mtok if mtok > 0 else math.nan

    return {
        "output_tokens": tokens,
        "cost_per_m_provisioned": per_m(provisioned),
        "cost_per_m_work": per_m(work),
        "cost_per_m_busy": per_m(busy),
        "token_share": {a: n / tokens if tokens else 0.0 for a, n in by_class.items()},
        "class_cost_per_m": {
            a: prices.get(a, ACCELERATOR_CLASSES[a].cost_per_hour) / capacity_tok_s[a] / 3600e-6
            for a in by_class
        },
    }


def ttft_attainment(
    records: Iterable[RequestRecord], window: tuple[float, float], slo: Slo
) -> dict[str, float]:
    """Share of the requests sent in ``window`` whose first token came within their TTFT SLO
    (their own ``ttft_slo``, else ``slo.ttft``): overall and per criticality. Shed, failed and
    never-answered requests count as misses. TTFT only: the TPOT SLO is not part of it."""
    t0, t1 = window
    met: dict[str, int] = {}
    seen: dict[str, int] = {}
    for r in records:
        if not t0 <= r.sent < t1:
            continue
        cls = r.request.criticality.value
        seen[cls] = seen.get(cls, 0) + 1
        ok = r.first_token is not None and not r.shed and not r.failed
        limit = r.request.ttft_slo if r.request.ttft_slo is not None else slo.ttft
        if ok and r.ttft(0.0) <= limit:
            met[cls] = met.get(cls, 0) + 1
    total = sum(seen.values())
    out = {"overall": sum(met.values()) / total if total else math.nan}
    for crit in Criticality:
        if crit.value in seen:
            out[crit.value] = met.get(crit.value, 0) / seen[crit.value]
    return out
