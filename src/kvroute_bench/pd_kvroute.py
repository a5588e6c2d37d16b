"""kvroute's own P/D scheduling in the virtual-time P/D bench (``kvroute_bench.pd``).

The real ``disagg-profile-handler``, role filters, ``prefix-cache-scorer`` (the prefix
producer the decider reads), ``queue-scorer`` and
``prefix-based-pd-decider`` (``nonCachedTokens`` fixed or ``auto``), built through
``kvroute.embed.build_scheduling`` on the bench's virtual clock. Each decision sees every
engine's queue as of that instant (no scrape lag), runs PrepareData, the scheduler and
PreRequest, and reads the split from the profile results; completions reach ResponseComplete
with the usage, which is what ``nonCachedTokens: auto`` learns from.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from kvroute.embed import build_scheduling, parse_epp_config
from kvroute.sdk import (
    CycleState,
    Endpoint,
    EndpointLoad,
    EndpointMetrics,
    InferenceRequest,
    Usage,
    default_registry,
)
from kvroute_sim.engine import Engine

CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: NON_CACHED}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
schedulingProfiles:
- name: prefill
  plugins:
  - {pluginRef: prefill-filter}
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
- name: decode
  plugins:
  - {pluginRef: decode-filter}
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class KvrouteRouter:
    def __init__(
        self,
        roles: Sequence[str],
        non_cached: str = "auto",
        seed: int = 0,
        exploration: float | None = None,
        charge_stalls: bool | None = None,
    ) -> None:
        """``roles[i]`` is engine i's ``llm-d.ai/role`` (``prefill``, ``decode`` or ``both``);
        ``exploration`` and ``charge_stalls`` set the decider's ``autoExploration`` and
        ``autoChargeStalls`` (with ``auto``)."""
        self.now = 0.0
        decider = non_cached
        if exploration is not None:
            decider += f", autoExploration: {exploration}"
        if charge_stalls is not None:
            decider += f", autoChargeStalls: {str(charge_stalls).lower()}"
        self.setup = build_scheduling(
            parse_epp_config(CONFIG.replace("NON_CACHED", decider)),
            default_registry(include_entry_points=False),
            rng=random.Random(seed),
            clock=lambda: self.now,
        )
        self.hooks: tuple[Any, ...] = self.setup.hooks
        self.endpoints = [
            Endpoint(
                name=f"gpu-{i}",
                address=f"10.0.0.{i + 1}",
                port=8000,
                labels=MappingProxyType({"llm-d.ai/role": role}),
                load=EndpointLoad(),
            )
            for i, role in enumerate(roles)
        ]
        self._index = {e.name: i for i, e in enumerate(self.endpoints)}
        self._requests: dict[str, InferenceRequest] = {}
        self.decider: Any = self.setup.plugins["prefix-based-pd-decider"]

    def route(
        self, rid: str, prompt: int, output: int, now: float, engines: Sequence[Engine]
    ) -> tuple[int | None, int]:
        self.now = now
        eps = []
        for e, eng in zip(self.endpoints, engines, strict=True):
            st = eng.stats()
            metrics = EndpointMetrics(
                waiting_queue_size=st.num_waiting + st.num_pending,
                running_queue_size=st.num_running,
                kv_cache_usage=st.kv_usage,
                updated_at=now,
            )
            eps.append(Endpoint(e.name, e.address, e.port, e.labels, metrics, e.load))
        text = f"{rid} " + "x" * max(0, 4 * prompt - len(rid) - 1)
        request = InferenceRequest(
            request_id=rid, incoming_model=MODEL, target_model=MODEL, prompt_text=text
        )
        state = CycleState(now)
        for h in self.hooks:
            if hasattr(h, "prepare_data"):
                h.prepare_data(state, request, eps)
        result = self.setup.scheduler.schedule(request, eps, state=state)
        for h in self.hooks:
            if hasattr(h, "pre_request"):
                h.pre_request(state, request, result)
        decode = result.profile_results["decode"]
        assert decode is not None
        d = self._index[decode.targets[0].name]
        prefill = result.profile_results.get("prefill")
        p = None if prefill is None or not prefill.targets else self._index[prefill.targets[0].name]
        self._requests[rid] = request
        return (None if p is None or p == d else p), d

    def complete(
        self, rid: str, now: float, output: int, first_token_at: float | None = None
    ) -> None:
        self.now = now
        request = self._requests.pop(rid)
        usage = Usage(0, output, 0, first_token_at)
        for h in self.hooks:
            if hasattr(h, "response_complete"):
                h.response_complete(request, self.endpoints[0], usage)

    @property
    def threshold(self) -> int:
        return int(self.decider.threshold)
