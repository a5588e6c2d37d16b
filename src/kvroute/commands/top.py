"""``kvroute top``: the live pool page in the terminal (rich), for an operator on SSH.

Follows the EPP's ``/pool/events`` stream on its metrics port (so it counts as an open page and
the EPP records decisions for it) and redraws: each endpoint's queue, running, KV use, adapters,
in-flight requests and tokens; TTFT/TPOT percentiles of recent requests; the latest decisions.
``--once`` prints one snapshot (from ``/pool/state``) and exits. Every value is rendered as
plain text (``rich.text.Text``), never as rich markup.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="the EPP's metrics address")
    parser.add_argument("--decisions", type=int, default=5, help="decisions shown (default 5)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")


def _pcts(values: list[float]) -> str:
    if not values:
        return "no data"
    v = sorted(values)

    def q(p: float) -> float:
        return 1000 * v[min(len(v) - 1, int(p * len(v)))]

    return f"p50 {q(0.5):.1f} ms · p90 {q(0.9):.1f} ms · n={len(v)}"


def render(state: dict[str, Any], decisions: int = 5) -> Group:
    """One frame from a ``/pool/state`` document."""
    t = Table(title=Text(f"kvroute pool {state['pool']}"), expand=False)
    for col in ("endpoint", "address", "queue", "running", "KV use", "adapters", "in flight",
                "tokens", "prefix blocks", "scraped"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("endpoint", "address", "adapters") else "right")
    for e in state["endpoints"]:
        adapters = (
            (", ".join(e["active_adapters"]) or "-")
            + " / "
            + (", ".join(e["waiting_adapters"]) or "-")
        )
        ago = e["scraped_ago_s"]
        t.add_row(
            *(
                Text(str(x))
                for x in (
                    e["name"], e["address"], e["waiting"], e["running"],
                    f"{100 * e['kv_cache_usage']:.1f}%", adapters, e["inflight"],
                    e["inflight_tokens"],
                    "-" if e.get("prefix_blocks") is None else e["prefix_blocks"],
                    "never" if ago is None else f"{ago:.2f}s",
                )
            )
        )  # fmt: skip
    ttft = [c["ttft_s"] for c in state["completions"] if c["ttft_s"] is not None]
    tpot = [c["tpot_s"] for c in state["completions"] if c["tpot_s"] is not None]
    lines: list[Any] = [t, Text(f"TTFT {_pcts(ttft)}    TPOT {_pcts(tpot)}")]
    for d in state["decisions"][:decisions]:
        score = "" if d["winning_score"] is None else f" score {d['winning_score']}"
        fb = f" fallbacks {', '.join(d['fallbacks'])}" if d["fallbacks"] else ""
        lines.append(
            Text(
                f"#{d['seq']} {d['model']} (p{d['priority']}, {d['fairness_id']}) -> "
                f"{d['pick']}{score}{fb}"
            )
        )
        for step in d["profiles"].get(d["primary_profile"], []):
            detail = ""
            if "scores" in step:
                detail = ", ".join(f"{k}={v}" for k, v in step["scores"].items())
            elif "survivors" in step:
                detail = "kept " + ", ".join(step["survivors"])
            elif "picked" in step:
                detail = "picked " + ", ".join(step["picked"])
            lines.append(Text(f"    {step['kind']} {step['plugin']}: {detail}", style="dim"))
    return Group(*lines)


def _events(url: str) -> Iterator[dict[str, Any]]:
    import httpx

    with (
        httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream("GET", f"{url}/pool/events") as r,
    ):
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.live import Live

    url = args.url.rstrip("/")
    console = Console()
    try:
        if args.once:
            state = httpx.get(f"{url}/pool/state", timeout=10.0).json()
            console.print(render(state, args.decisions))
            return 0
        with Live(console=console, auto_refresh=False, screen=False) as live:
            for state in _events(url):
                live.update(render(state, args.decisions), refresh=True)
    except httpx.HTTPError as exc:
        console.print(Text(f"kvroute top: cannot read {url}: {exc}"))
        return 1
    return 0
