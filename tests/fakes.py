"""Builders for the values tests need: endpoints with given metrics, requests, a fixed clock.

Real objects (frozen ``Endpoint``/``EndpointMetrics``, ``InferenceRequest``), not duck types, so
a test exercises exactly what the scheduler sees in production.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.request import ApiKind, Criticality, InferenceRequest

# The fixed "now" (time.monotonic() units) of unit tests; endpoints are scraped at NOW - age.
NOW = 1_000.0

_BASE = ipaddress.IPv4Address("10.0.0.0")


def make_endpoint(
    name: str,
    *,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    active: Iterable[str] = (),
    waiting_models: Iterable[str] = (),
    max_active: int = 0,
    sent: int = 0,
    inflight: int = 0,
    age: float = 0.0,
    never_scraped: bool = False,
    address: str | None = None,
    port: int = 8000,
    labels: Mapping[str, str] | None = None,
    block_size: int = 0,
    num_blocks: int = 0,
) -> Endpoint:
    """An endpoint named ``name`` whose last scrape is ``age`` seconds before :data:`NOW`.

    ``sent``/``inflight`` set the EPP's own load counters. Without ``address`` the endpoint
    gets ``10.0.0.<n>`` where n comes from the trailing digits of the name (or 1).
    """
    if address is None:
        digits = "".join(ch for ch in name if ch.isdigit()) or "0"
        address = str(_BASE + int(digits) + 1)
    metrics = EndpointMetrics(
        waiting_queue_size=waiting,
        running_queue_size=running,
        kv_cache_usage=kv,
        active_models=frozenset(active),
        waiting_models=frozenset(waiting_models),
        max_active_models=max_active,
        cache_block_size=block_size,
        cache_num_blocks=num_blocks,
        updated_at=0.0 if never_scraped else NOW - age,
    )
    return Endpoint(
        name=name,
        address=address,
        port=port,
        labels=MappingProxyType(dict(labels or {})),
        metrics=metrics,
        load=EndpointLoad(inflight=inflight, sent_since_scrape=sent),
    )


def make_request(
    model: str = "base-model",
    *,
    target: str | None = None,
    criticality: Criticality = Criticality.STANDARD,
    priority: int | None = None,
    prompt: str = "hello",
    api: ApiKind = ApiKind.COMPLETIONS,
    request_id: str = "req-1",
) -> InferenceRequest:
    """A scheduled request; ``priority`` defaults to the criticality's (-1 / 0 / 1)."""
    return InferenceRequest(
        request_id=request_id,
        incoming_model=model,
        target_model=target or model,
        api=api,
        priority=criticality.to_priority() if priority is None else priority,
        criticality=criticality,
        prompt_text=prompt,
        body=MappingProxyType({"model": target or model, "prompt": prompt}),
    )


def make_state(now: float = NOW) -> CycleState:
    return CycleState(now)


def names(endpoints: Iterable[Endpoint]) -> list[str]:
    return [e.name for e in endpoints]
