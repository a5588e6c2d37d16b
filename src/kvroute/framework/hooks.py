"""Request-lifecycle extension points around the scheduling cycle (upstream requestcontrol).

The director calls them in this order for every request:
``RequestHeaderProcessor`` (first, before admission; may set request attributes) ->
``Screener`` (narrows the candidates) ->
``PrepareData`` (before scheduling, may write into the CycleState) ->
``Admitter`` (may deny the request: 500 ``Internal``) -> scheduling ->
``PreRequest`` (the target is known; e.g. prefix-index insert, in-flight increment) ->
``ResponseComplete`` (exactly once per scheduled request, also when the client disconnected).
All are synchronous and must be cheap: they run on the event loop in the request path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.request import InferenceRequest, Usage
from kvroute.framework.scheduling import CycleState, SchedulingResult, StateKey
from kvroute.plugins.base import Plugin

# Headers a PreRequest plugin asks to set on the request forwarded to the model server (e.g.
# ``x-prefiller-host-port``); the director copies them onto its decision.
UPSTREAM_HEADERS: StateKey[dict[str, str]] = StateKey("upstream-headers")

# Headers only plugins write (upstream ``pkg/common/routing/common.go``): a client's copies are
# removed before forwarding, so a client cannot pick the prefill server itself.
PLUGIN_OWNED_HEADERS: tuple[str, ...] = (
    "x-prefiller-host-port",
    "x-encoder-hosts-ports",
    "x-kv-cache-source-host-port",
    "x-data-parallel-host-port",
)


@runtime_checkable
class PrepareData(Plugin, Protocol):
    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None: ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None: ...


@runtime_checkable
class ResponseComplete(Plugin, Protocol):
    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None: ...


@runtime_checkable
class Prefetch(Plugin, Protocol):
    """CPU-heavy per-request work (tokenising) the director runs in a worker thread before
    scheduling; the result reaches the plugin's PrepareData through the cycle state."""

    def prefetch(self, request: InferenceRequest) -> object: ...


@runtime_checkable
class Screener(Plugin, Protocol):
    """Narrows the candidate endpoints before any profile runs (upstream ``Screener``).

    Runs after the candidates are located and before ``PrepareData``; the director intersects
    the results of all screeners (order-preserving). An empty result rejects the request with
    503 ``rejected-no-endpoints``. Synchronous and cheap, on the request path.
    """

    def screen(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]: ...


@runtime_checkable
class RequestHeaderProcessor(Plugin, Protocol):
    """Reads the request's headers first, before admission (upstream ``RequestHeaderProcessor``).

    Returns request attributes to set (e.g. ``agent-identity``); the director merges the
    results of all processors in config order (a later one overrides an earlier key) into
    ``InferenceRequest.attributes``. Synchronous and cheap, on the request path.
    """

    def process_request_headers(self, request: InferenceRequest) -> Mapping[str, str]: ...


@runtime_checkable
class ResponseMetadata(Plugin, Protocol):
    """Dynamic metadata for the proxy from a completed response's usage (upstream's
    ``ResponseBody`` plugins writing ``Response.DynamicMetadata``, e.g.
    ``request-attribute-reporter``): namespace -> {key: value}. Called once per completed
    request, with the ResponseComplete hooks; the ext_proc stream sends the merged result on
    its last response message (full mode: the end-of-stream body chunk or the trailers)."""

    def response_metadata(
        self, request: InferenceRequest, usage: Usage | None
    ) -> Mapping[str, Mapping[str, float]]: ...


@runtime_checkable
class Admitter(Plugin, Protocol):
    """Admits or denies a request after PrepareData, before scheduling (upstream ``Admitter``).

    Returns ``None`` to admit, or the reason of a denial; the director answers a denial with
    500 ``inference error: Internal - request cannot be admitted: <reason>`` as upstream does.
    The first denial wins (later admitters do not run).
    """

    def admit_request(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RequestHooks:
    """The request hooks of a config, classified once at load (never on the request path)."""

    prepare_data: tuple[PrepareData, ...] = ()
    pre_request: tuple[PreRequest, ...] = ()
    response_complete: tuple[ResponseComplete, ...] = ()
    prefetch: tuple[Prefetch, ...] = ()
    header_processors: tuple[RequestHeaderProcessor, ...] = ()
    screeners: tuple[Screener, ...] = ()
    admitters: tuple[Admitter, ...] = ()
    response_metadata: tuple[ResponseMetadata, ...] = ()

    @classmethod
    def of(cls, plugins: Iterable[object]) -> RequestHooks:
        """Sort ``plugins`` by the hook protocols they implement (one may implement several)."""
        items = tuple(plugins)
        return cls(
            prepare_data=tuple(p for p in items if isinstance(p, PrepareData)),
            pre_request=tuple(p for p in items if isinstance(p, PreRequest)),
            response_complete=tuple(p for p in items if isinstance(p, ResponseComplete)),
            prefetch=tuple(p for p in items if isinstance(p, Prefetch)),
            header_processors=tuple(p for p in items if isinstance(p, RequestHeaderProcessor)),
            screeners=tuple(p for p in items if isinstance(p, Screener)),
            admitters=tuple(p for p in items if isinstance(p, Admitter)),
            response_metadata=tuple(p for p in items if isinstance(p, ResponseMetadata)),
        )

    def __bool__(self) -> bool:
        return bool(
            self.prepare_data
            or self.pre_request
            or self.response_complete
            or self.prefetch
            or self.header_processors
            or self.screeners
            or self.admitters
            or self.response_metadata
        )
