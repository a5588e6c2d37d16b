"""How well ``predicted-latency-producer`` predicts TTFT after a minute of traffic (virtual time).

    python -m kvroute_bench.predictor_error --preset heterogeneous --load 0.7 --duration 70

Runs one stage of the preset on the virtual-time pool with kvroute's default profile plus
``latency-scorer`` (so the predictor learns from every response, exactly as in the EPP: features
recorded at PreRequest, TTFT from the first streamed chunk, TPOT from the rest), then prints the
median of |predicted - observed| / observed over the predictor's last window of observations
(2,000 requests), i.e. the error of predictions made after the first minute when the stage is
70 s long at a few hundred requests/s. The offered load is a fraction of the saturation probe.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvroute.embed import builtin_epp_config
from kvroute.embed.latency import LatencyPredictor, LatencyScorer, PredictedLatencyProducer
from kvroute.sdk import default_registry
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.epp_router import EppRouter
from kvroute_bench.sim_replica import SimReplica, replica_config, step_costs
from kvroute_bench.sweep import SweepSpec, estimate_saturation, pool_saturation
from kvroute_bench.workload import generate, resolve_spec
from kvroute_sim.accelerators import parse_pool


def latency_scorer_config() -> str:
    """kvroute's default profile plus ``latency-scorer`` (weight 1), as EPP config text."""
    cfg = builtin_epp_config("default", default_registry(include_entry_points=False)).to_yaml_dict()
    cfg["plugins"].append({"type": "latency-scorer"})
    cfg["schedulingProfiles"][0]["plugins"].insert(-1, {"pluginRef": "latency-scorer", "weight": 1})
    return json.dumps(cfg)


def _config_with_latency_scorer(path: Path) -> None:
    path.write_text(latency_scorer_config())


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[len(s) // 2]


class PredictorProbe:
    """Reads the TTFT predictor of a live, in-process EPP (``Gateway(backend_factory=...)``).

    :meth:`factory` builds the production backend and keeps its decision graph, so the
    ``predicted-latency-producer``'s own error window (|predicted - observed| / observed TTFT,
    appended as each response's first chunk arrives) can be read while traffic runs. :meth:`mark`
    notes how many observations exist at that moment (e.g. after one minute); :meth:`report`
    gives the median over all of them and over those after the mark.
    """

    def __init__(self) -> None:
        self.graph: Any = None
        self._marked: int | None = None

    async def factory(self, settings: Any, datastore: Any, metrics: Any) -> Any:
        from kvroute.embed.gateway import build_director_backend

        built = await build_director_backend(settings, datastore, metrics)
        self.graph = built.graph
        return built

    def predictor(self) -> LatencyPredictor | None:
        if self.graph is None:
            return None
        for plugin in self.graph.setup.plugins.values():
            if isinstance(plugin, PredictedLatencyProducer):
                return plugin.predictor
            producer = getattr(plugin, "producer", None)
            if isinstance(producer, PredictedLatencyProducer):
                return producer.predictor
        return None

    def mark(self) -> None:
        p = self.predictor()
        self._marked = None if p is None else len(p.ttft_rel_errors)

    def report(self) -> dict[str, Any] | None:
        """``None`` when the EPP has no latency predictor."""
        p = self.predictor()
        if p is None:
            return None
        errors = list(p.ttft_rel_errors)
        full = len(errors) == p.ttft_rel_errors.maxlen  # older observations fell out
        after = errors[self._marked :] if self._marked is not None and not full else []
        return {
            "observations": len(errors),
            "window_full": full,
            "median_abs_ttft_error": _median(errors),
            "observations_after_mark": len(after) if self._marked is not None else None,
            "median_abs_ttft_error_after_mark": _median(after),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="heterogeneous")
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of saturation")
    ap.add_argument("--duration", type=float, default=70.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    wl = resolve_spec(args.preset)
    engine = replica_config("h100-llama3-8b")
    accel = tuple(parse_pool(wl.pool, args.replicas)) if wl.pool else ()
    spec = SweepSpec(
        workload=wl,
        engine=engine,
        replicas=args.replicas,
        policies=(),
        qps=(),
        duration=args.duration,
        accelerators=accel,
    )
    if accel:
        sat = pool_saturation(wl, engine, accel, seed=args.seed)
    else:
        sat = estimate_saturation(wl, engine, seed=args.seed) * args.replicas
    qps = sat * args.load
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latency.json"
        _config_with_latency_scorer(path)
        router = EppRouter("kvroute+latency", str(path), seed=args.seed)
    scorer = router.plugins["latency-scorer"]
    assert isinstance(scorer, LatencyScorer)
    producer: PredictedLatencyProducer = scorer.producer
    requests = generate(wl, rate=qps, duration=args.duration, seed=args.seed)
    engines = [SimReplica(c) for c in spec.replica_configs()]
    result = run_stage(
        requests,
        engines,
        router,
        offered_qps=qps,
        duration=args.duration,
        config=RunConfig(),
        costs=step_costs(engine),
    )
    err = producer.predictor.median_ttft_error()
    out = {
        "preset": args.preset,
        "offered_qps": round(qps, 1),
        "duration_s": args.duration,
        "observations": len(producer.predictor.ttft_rel_errors),
        "median_abs_ttft_error": None if err is None else round(err, 4),
        "ttft_p90_ms": round(result.metrics.ttft_p90 * 1e3, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
