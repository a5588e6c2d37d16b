"""Endpoint identity, scraped metric snapshots and the picker's own load counters.

A scrape produces a new frozen :class:`EndpointMetrics`; the scraper swaps it in with
``dataclasses.replace(endpoint, metrics=new)``. On one event loop a plain assignment is as
atomic as upstream's ``atomic.Pointer``. :class:`EndpointLoad` is the only mutable part: the
counters the EPP itself keeps between scrapes (requests sent and not finished), so decisions
made between two scrapes do not all herd onto the endpoint that looked idle. The scheduling
cycle is synchronous, so the counters cannot move during one cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kvroute.hostport import format_hostport

ENGINE_TYPE_LABEL = "inference.networking.k8s.io/engine-type"
RANK_SEPARATOR = "-rank-"  # Kubernetes discovery names one endpoint per rank <pod>-rank-<i>


def rank_endpoint_name(pod: str, rank: int) -> str:
    """The endpoint name of ``pod``'s data-parallel rank ``rank``."""
    return f"{pod}{RANK_SEPARATOR}{rank}"


def split_rank_name(name: str) -> tuple[str, int | None]:
    """``<pod>-rank-<i>`` -> ``(pod, i)``; any other endpoint name -> ``(name, None)``."""
    head, sep, tail = name.rpartition(RANK_SEPARATOR)
    if sep and tail.isascii() and tail.isdigit():
        return head, int(tail)
    return name, None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointMetrics:
    """One scrape of a model server; replaced, never mutated."""

    waiting_queue_size: int = 0
    running_queue_size: int = 0
    kv_cache_usage: float = 0.0  # fraction 0..1
    active_models: frozenset[str] = frozenset()  # LoRA adapters running now
    waiting_models: frozenset[str] = frozenset()  # LoRA adapters requested, not loaded
    max_active_models: int = 0
    cache_block_size: int = 0  # tokens per KV block (0 = unknown)
    cache_num_blocks: int = 0  # KV blocks on the device (0 = unknown)
    updated_at: float = 0.0  # time.monotonic() of the scrape; 0 = never scraped


EMPTY_METRICS = EndpointMetrics()


@dataclass(slots=True)
class EndpointLoad:
    """The EPP's in-flight ledger for one endpoint: requests it sent and has not seen finish.

    Kept by the datastore (``on_request_sent`` / ``on_request_finished``, driven by the
    director); read by the scheduling plugins. ``inflight_tokens`` are the estimated prompt
    tokens of those requests (upstream ``inflight-load-producer``'s default charge); the
    ``inflight_models`` counts are per target model (base model or LoRA adapter), absent at 0.
    ``prefill_tokens`` is the part of ``inflight_tokens`` whose first token the EPP has not yet
    seen (charged at send, released at the first response chunk, or at completion when no chunk
    was observed): the prompt work still ahead of the endpoint, as upstream's
    ``inflight-load-producer`` releases prompt tokens. It is this replica's own count only.

    With active-active replicas (:mod:`kvroute.replicasync`) the totals the plugins read are
    this replica's own counts plus the ``remote_*`` part, the peers' published counts; the
    local part is always ``total - remote`` and only the local part is ever uncounted here.
    """

    inflight: int = 0
    sent_since_scrape: int = 0  # sent after the current metrics snapshot was taken
    inflight_tokens: int = 0  # estimated prompt tokens of in-flight requests
    prefill_tokens: int = 0  # of those, the tokens of requests with no first token seen yet
    inflight_models: dict[str, int] = field(default_factory=dict)  # target model -> requests
    remote_inflight: int = 0  # of ``inflight``: the peers' part
    remote_tokens: int = 0  # of ``inflight_tokens``: the peers' part
    remote_models: dict[str, int] = field(default_factory=dict)  # of ``inflight_models``


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model-server rank: ``address:port``. ``name`` is unique within the pool."""

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metrics: EndpointMetrics = EMPTY_METRICS
    load: EndpointLoad = field(default_factory=EndpointLoad, compare=False)
    # Values data-layer extractors stamp on the endpoint (upstream's endpoint attributes:
    # ``GPUUtilization``, ``Topology``, the served models, ...), keyed by attribute name;
    # replaced as a whole by ``Datastore.set_attributes``, never mutated.
    attributes: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )
    # The IP of the node the endpoint runs on (a pod's ``status.hostIP``), "" when unknown:
    # where node-level agents (a DCGM exporter DaemonSet) are scraped.
    node_address: str = ""
    # ``hostport``, formatted once (the request path reads it several times per endpoint).
    _hostport: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hostport", format_hostport(self.address, self.port))

    @property
    def hostport(self) -> str:
        """The value Envoy expects in ``x-gateway-destination-endpoint``."""
        return self._hostport

    @property
    def engine_type(self) -> str:
        return self.labels.get(ENGINE_TYPE_LABEL, "vllm")
