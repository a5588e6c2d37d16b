"""``kvroute schedule``: run one scheduling cycle offline and explain it.

Inputs::

    --endpoints STATE   YAML or JSON list of endpoints (or inline JSON starting with '[')
                        - name: vllm-0                      # required, unique
                          address: 10.0.0.1                 # optional (default 10.0.0.<n>)
                          port: 8000                        # optional
                          labels: {...}                     # optional
                          metrics: {waiting_queue_size, running_queue_size, kv_cache_usage,
                                    active_models, waiting_models, max_active_models,
                                    cache_block_size, cache_num_blocks,
                                    age_ms}                  # age of the scrape (default 0)
                          load: {inflight, sent_since_scrape}   # the EPP's own counters
    --request REQ       JSON: the OpenAI body plus optional keys that are not sent upstream:
                        headers {..}, criticality Critical|Standard|Sheddable (overrides what
                        the resources say), path (default: chat if "messages", else completions),
                        subset [ip:port, ...] (the Envoy subset hint)
    --config FILE       EndpointPickerConfig (default: kvroute's default profile)
    --resources FILE    InferencePool/InferenceModel/... YAML (repeatable) for model resolution
    --profile NAME      run only that profile; with no --config, a built-in one: "default",
                        "upstream" (queue 2, KV 2, prefix 3) or "decision-tree"

Output: one JSON object on stdout: ``status`` (the HTTP status the gateway would answer),
``target``, ``fallbacks``, ``endpoint_header``, ``request``, ``trace`` and ``error`` when the
status is not 200. Exit status 0 when a decision (of any status) was printed, 2 when an input
file is invalid (the message goes to stderr).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvroute.config.epp_config import builtin_epp_config, load_epp_config
from kvroute.config.resources import load_resources
from kvroute.config.strict_yaml import StrictLoader, yaml_error_message
from kvroute.config.yaml_errors import format_validation_error
from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, EppError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import api_kind_for_path, parse_request
from kvroute.requestcontrol.director import PassthroughResolver, Resolver, subset_candidates
from kvroute.requestcontrol.model_resolution import ModelResolver, ResolvedModel
from kvroute.scheduling.explain import render_trace
from kvroute.scheduling.interfaces import CycleTrace
from kvroute.scheduling.request import Criticality
from kvroute.wiring import build_epp

# A fixed "now" for the dry run: metric ages are relative to it, so runs are reproducible.
DRY_RUN_NOW = 1_000_000.0
_BASE_ADDRESS = ipaddress.IPv4Address("10.0.0.1")
_REQUEST_ONLY_KEYS = ("headers", "criticality", "path", "subset")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StateMetrics(_Strict):
    waiting_queue_size: int = Field(default=0, ge=0)
    running_queue_size: int = Field(default=0, ge=0)
    kv_cache_usage: float = Field(default=0.0, ge=0.0)
    active_models: list[str] = Field(default_factory=list)
    waiting_models: list[str] = Field(default_factory=list)
    max_active_models: int = Field(default=0, ge=0)
    cache_block_size: int = Field(default=0, ge=0)
    cache_num_blocks: int = Field(default=0, ge=0)
    age_ms: float = Field(default=0.0, ge=0.0)


class StateLoad(_Strict):
    inflight: int = Field(default=0, ge=0)
    sent_since_scrape: int = Field(default=0, ge=0)


class StateEndpoint(_Strict):
    name: str = Field(min_length=1)
    address: str | None = None
    port: int = Field(default=8000, ge=1, le=65535)
    labels: dict[str, str] = Field(default_factory=dict)
    metrics: StateMetrics = Field(default_factory=StateMetrics)
    load: StateLoad = Field(default_factory=StateLoad)


class _State(BaseModel):
    endpoints: list[StateEndpoint]


_EPILOG = """\
STATE (YAML or JSON list; inline JSON allowed):
  - name: vllm-0                       # required, unique
    address: 10.0.0.1                  # default 10.0.0.<n>; port: 8000
    labels: {...}
    metrics: {waiting_queue_size, running_queue_size, kv_cache_usage (0..1),
              active_models: [..], waiting_models: [..], max_active_models,
              age_ms}                  # scrape age; > 200 ms counts as stale
    load: {inflight, sent_since_scrape}

REQ (JSON; inline allowed): the OpenAI body ("model", "prompt" or "messages", ...)
plus keys that are not sent upstream: "headers": {...}, "criticality":
"Critical"|"Standard"|"Sheddable" (overrides the resources), "path" (API path;
default chat if "messages" else completions), "subset": ["ip:port", ...].

Example:
  kvroute schedule --endpoints tests/testdata/schedule/pool-state.yaml \\
      --request tests/testdata/schedule/lora-critical-request.json --profile decision-tree

Exit status 0 when a decision of any HTTP status was printed, 2 for invalid input.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run one scheduling cycle offline over a given endpoint state and print a JSON "
        "explanation: target, fallbacks, the HTTP status the gateway would answer, and every "
        "plugin's view (filter survivors, raw/clamped/weighted scores, totals, the pick)."
    )
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--endpoints", required=True, metavar="STATE", help="endpoint state: YAML/JSON file"
    )
    parser.add_argument("--request", required=True, metavar="REQ", help="request: JSON file")
    parser.add_argument("--config", type=Path, metavar="EPPCONFIG", help="EndpointPickerConfig")
    parser.add_argument(
        "--resources",
        type=Path,
        action="append",
        default=[],
        metavar="POOL_YAML",
        help="InferencePool/InferenceModel/Objective/Rewrite YAML (repeatable)",
    )
    parser.add_argument("--pool", help="InferencePool name when the resources hold several")
    parser.add_argument(
        "--profile",
        help='scheduling profile to run ("default", "upstream" or "decision-tree" built in)',
    )
    parser.add_argument("--seed", type=int, help="seed for random tie-breaks and weighted draws")
    parser.add_argument("--compact", action="store_true", help="one-line JSON")


def run(args: argparse.Namespace) -> int:
    try:
        outcome = explain(
            endpoints_arg=args.endpoints,
            request_arg=args.request,
            config_path=args.config,
            resource_paths=args.resources,
            pool=args.pool,
            profile=args.profile,
            seed=args.seed,
        )
    except (ConfigError, InputError) as exc:
        print(f"kvroute schedule: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(outcome, indent=None if args.compact else 2))
    return 0


class InputError(EppError):
    """An unreadable or invalid ``--endpoints`` / ``--request`` file."""


def explain(
    *,
    endpoints_arg: str,
    request_arg: str,
    config_path: Path | None = None,
    resource_paths: Sequence[Path] = (),
    pool: str | None = None,
    profile: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The dry run behind the command, returning the JSON-ready dict (tests call this too)."""
    endpoints = parse_state(_read_arg(endpoints_arg, "--endpoints"), endpoints_arg)
    req = _load_json_object(_read_arg(request_arg, "--request"), request_arg)
    headers, criticality, path, subset, body = _split_request(req, request_arg)

    rng = random.Random(seed)
    registry = default_registry()
    if config_path is not None:
        config, source = load_epp_config(config_path), str(config_path)
    else:
        name = profile or "default"
        config, source = builtin_epp_config(name, registry), f"<{name} config>"
    resolver = _resolver(resource_paths, pool, rng, criticality)
    graph = build_epp(
        config,
        _datastore_of(endpoints),
        registry=registry,
        source=source,
        resolver=resolver,
        profile=profile if config_path is not None else None,
        rng=rng,
        clock=lambda: DRY_RUN_NOW,
    )
    setup, director = graph.setup, graph.director
    flow_control = graph.flow_control
    trace = CycleTrace()
    out: dict[str, Any] = {"status": 200, "target": None, "fallbacks": [], "endpoint_header": ""}
    raw = json.dumps(body).encode()
    candidates = [e.name for e in subset_candidates(endpoints, subset)]
    try:
        parsed = parse_request(raw, path or _default_path(body))
        decision = director.handle_request(parsed, headers, "dry-run", subset, trace=trace)
    except EppError as exc:
        out.update(status=exc.http_status, error=exc.response_body())
        resolved = None
    else:
        out.update(
            target=decision.target.name,
            fallbacks=[e.name for e in decision.fallbacks],
            endpoint_header=decision.endpoint_header,
        )
        resolved = decision.resolved
        director.handle_response_complete(decision)
        if flow_control is not None:
            fc_req = decision.request
            out["flow_control"] = {
                "band": fc_req.priority,
                "flow": fc_req.fairness_id,
                "queue_wait_ms": 0.0,  # a dry run never waits
                "would_wait": flow_control.saturation()
                >= flow_control.queues.settings.usage_limit.ceiling(fc_req.priority, 0.0),
            }
    if resolved is None and "model" in body and isinstance(body["model"], str):
        try:
            resolved = resolver.resolve(body["model"], headers)
        except EppError:
            resolved = None
    out["request"] = {
        "api": api_kind_for_path(path or _default_path(body)).value,
        "incoming_model": resolved.incoming_model if resolved else body.get("model"),
        "target_model": resolved.target_model if resolved else None,
        "criticality": resolved.criticality.value if resolved else None,
        "priority": resolved.priority if resolved else None,
        "objective": resolved.objective_name if resolved else None,
        "rewrite": resolved.rewrite_name if resolved else None,
    }
    out["profile"] = [p.name for p in setup.effective_config.scheduling_profiles]
    out["config"] = source
    out["trace"] = render_trace(trace, candidates)
    return out


def parse_state(text: str, source: str) -> tuple[Endpoint, ...]:
    """Endpoints from a STATE document (a list, or a mapping with an ``endpoints`` list)."""
    try:
        doc = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise InputError(yaml_error_message(source, exc)) from None
    if isinstance(doc, dict) and set(doc) == {"endpoints"}:
        doc = doc["endpoints"]
    if not isinstance(doc, list):
        raise InputError(f"{source}: expected a list of endpoints")
    try:
        state = _State.model_validate({"endpoints": doc})
    except ValidationError as exc:
        lines = format_validation_error(exc)
        raise InputError("\n".join(f"{source}: {line}" for line in lines)) from None
    seen: set[str] = set()
    out: list[Endpoint] = []
    for i, ep in enumerate(state.endpoints):
        if ep.name in seen:
            raise InputError(f"{source}: endpoints[{i}].name: duplicate endpoint {ep.name!r}")
        seen.add(ep.name)
        m = ep.metrics
        metrics = EndpointMetrics(
            waiting_queue_size=m.waiting_queue_size,
            running_queue_size=m.running_queue_size,
            kv_cache_usage=m.kv_cache_usage,
            active_models=frozenset(m.active_models),
            waiting_models=frozenset(m.waiting_models),
            max_active_models=m.max_active_models,
            cache_block_size=m.cache_block_size,
            cache_num_blocks=m.cache_num_blocks,
            updated_at=DRY_RUN_NOW - m.age_ms / 1000.0,
        )
        out.append(
            Endpoint(
                name=ep.name,
                address=ep.address or str(_BASE_ADDRESS + i),
                port=ep.port,
                labels=MappingProxyType(dict(ep.labels)),
                metrics=metrics,
                load=EndpointLoad(
                    inflight=ep.load.inflight, sent_since_scrape=ep.load.sent_since_scrape
                ),
            )
        )
    return tuple(out)


def _datastore_of(endpoints: Sequence[Endpoint]) -> Datastore:
    """The dry run's datastore: the STATE file's endpoints, metrics and counters included."""
    store = Datastore(clock=lambda: DRY_RUN_NOW)
    for e in endpoints:
        store.upsert_endpoint(e.name, e.address, e.port, e.labels)
        store.update_metrics(e.name, e.metrics)
        load = store.load_of(e.name)
        assert load is not None
        load.inflight = e.load.inflight
        load.sent_since_scrape = e.load.sent_since_scrape  # after update_metrics, which resets it
    return store


def _resolver(
    paths: Sequence[Path], pool: str | None, rng: random.Random, criticality: Criticality | None
) -> Resolver:
    if not paths:
        return PassthroughResolver(criticality or Criticality.STANDARD)
    resources = load_resources(list(paths))
    if resources.pools:
        view = resources.pool(pool)
        resources = resources.for_pool(view.name, view.namespace)
    resolver = ModelResolver(resources, rng)
    return resolver if criticality is None else _CriticalityOverride(resolver, criticality)


class _CriticalityOverride:
    """The REQ file's ``criticality`` shortcut wins over what the resources decided."""

    def __init__(self, inner: Resolver, criticality: Criticality) -> None:
        self.inner = inner
        self.criticality = criticality

    def resolve(self, model: str, headers: Mapping[str, str]) -> ResolvedModel:
        resolved = self.inner.resolve(model, headers)
        return replace(
            resolved, criticality=self.criticality, priority=self.criticality.to_priority()
        )


def _read_arg(arg: str, flag: str) -> str:
    """The argument itself when it is inline JSON, else the file it names."""
    stripped = arg.lstrip()
    if stripped.startswith(("{", "[")):
        return arg
    try:
        return Path(arg).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{flag} {arg}: cannot read: {exc.strerror or exc}") from None


def _load_json_object(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{source}: expected a JSON object")
    return doc


def _split_request(
    req: dict[str, Any], source: str
) -> tuple[dict[str, str], Criticality | None, str | None, list[str] | None, dict[str, Any]]:
    body = {k: v for k, v in req.items() if k not in _REQUEST_ONLY_KEYS}
    headers_raw = req.get("headers", {})
    if not isinstance(headers_raw, dict) or not all(
        isinstance(v, str) for v in headers_raw.values()
    ):
        raise InputError(f"{source}: headers: expected a mapping of strings")
    headers = {str(k).lower(): v for k, v in headers_raw.items()}
    crit_raw = req.get("criticality")
    criticality = None
    if crit_raw is not None:
        try:
            criticality = Criticality(crit_raw)
        except ValueError:
            allowed = ", ".join(c.value for c in Criticality)
            raise InputError(
                f"{source}: criticality: must be one of {allowed}, got {crit_raw!r}"
            ) from None
    path = req.get("path")
    if path is not None and not isinstance(path, str):
        raise InputError(f"{source}: path: expected a string")
    subset = req.get("subset")
    if subset is not None and (
        not isinstance(subset, list) or not all(isinstance(s, str) for s in subset)
    ):
        raise InputError(f"{source}: subset: expected a list of 'ip:port' strings")
    return headers, criticality, path, subset, body


def _default_path(body: Mapping[str, Any]) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"
