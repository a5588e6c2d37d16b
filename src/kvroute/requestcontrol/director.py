"""The director: one request from parsed body to routing decision (upstream ``Director``).

The pipeline of upstream ``Director.HandleRequest``, without I/O (the ext_proc server owns the
stream; this is pure and synchronous so it runs inline on the event loop)::

    model resolution  -> InferenceModel / Rewrite / header: target model, criticality, priority
    header processors -> RequestHeaderProcessor plugins set request attributes; fairness ID =
                         fairness header, else the ``agent-identity`` attribute, else default
    candidates        -> subset hint (envoy.lb x-gateway-destination-endpoint-subset), by IP
                         none -> 503 NoCandidatesError
    admission         -> flow control off: sheddable (priority < 0) while saturated -> 429
                         flow control on (default; :meth:`Director.handle_request_async`): the
                         request waits in its priority band / flow until the pool has room,
                         then everything below runs against the state of that moment
    pre-scheduling    -> (async path) CPU-heavy ``prefetch`` hooks (tokenisation, chat-template
                         rendering) run in a worker thread; results reach PrepareData via the
                         CycleState (:data:`PREFETCHED`)
    screeners         -> Screener plugins narrow the candidates (intersected); none -> 503
    PrepareData hooks -> may write into the CycleState (e.g. prefix-match data); a hook that
                         raises is logged and skipped, as upstream logs PrepareData failures
    admitters         -> an Admitter plugin may deny -> 500 (``requestcontrol.extensions``)
    scheduling        -> filters / scorers / picker; nothing left -> 429 PoolExhaustedError
    PreRequest hooks  -> the target is known (prefix-index insert, ...)
    in-flight         -> datastore.on_request_sent(target): request, prompt tokens, model

:meth:`Director.handle_first_token` (the first response chunk passed) moves the request's uncached
prompt tokens (the prompt less what ``PREFIX_CACHE_MATCH`` says the target caches: the prefill it
must compute, upstream ``inflight-load-producer``'s charge) out of the endpoint's prefill ledger
(``EndpointLoad.prefill_tokens``), once per decision.
:meth:`Director.handle_response_complete` undoes the in-flight count and runs the
ResponseComplete hooks exactly once per decision, however many times the caller reports the end
(response trailers, end of body, stream cleanup after a client disconnect all may).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from time import perf_counter
from types import MappingProxyType
from typing import Any, Protocol

from kvroute.datastore.endpoint import Endpoint, EndpointLoad
from kvroute.datastore.health import PassiveHealth
from kvroute.errors import EppError, NoCandidatesError, PoolExhaustedError
from kvroute.flowcontrol.item import QueueItem
from kvroute.flowcontrol.runtime import FlowController, slo_deadline
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH
from kvroute.hostport import host_of
from kvroute.plugins.base import Plugin
from kvroute.protocol.openai import ParsedRequest
from kvroute.requestcontrol.admission import AdmissionController
from kvroute.requestcontrol.extensions import (
    AGENT_IDENTITY_ATTRIBUTE,
    collect_response_metadata,
    run_admitters,
    run_header_processors,
    run_screeners,
)
from kvroute.requestcontrol.headers import FAIRNESS_ID, MODEL_REWRITE, read_aliased
from kvroute.requestcontrol.hooks import RequestHooks, Usage
from kvroute.requestcontrol.model_resolution import ResolvedModel
from kvroute.scheduling.interfaces import (
    PREFETCHED,
    CycleState,
    CycleTrace,
    SaturationDetector,
    SchedulingResult,
)
from kvroute.scheduling.request import Criticality, InferenceRequest
from kvroute.scheduling.scheduler import Scheduler
from kvroute.scheduling.timing import PluginTimings

log = logging.getLogger(__name__)

DEFAULT_FAIRNESS_ID = "default-flow"

NO_CANDIDATES_MESSAGE = "failed to find endpoint candidates for serving the request"
NO_ENDPOINTS_MESSAGE = "no pods available in datastore"
AVG_CHARS_PER_TOKEN = 4  # upstream's estimate for untokenised text


class EndpointSource(Protocol):
    """What the director needs of the datastore: a snapshot and the in-flight counters."""

    @property
    def health(self) -> PassiveHealth: ...

    def endpoints(self) -> tuple[Endpoint, ...]: ...

    def on_request_sent(
        self, name: str, tokens: int = 0, *, model: str = "", prefill_tokens: int | None = None
    ) -> None: ...

    def on_request_finished(
        self,
        name: str,
        tokens: int = 0,
        *,
        load: EndpointLoad | None = None,
        model: str = "",
        prefill_tokens: int | None = None,
    ) -> None: ...

    def on_first_token(
        self, name: str, tokens: int = 0, *, load: EndpointLoad | None = None
    ) -> None: ...


class Resolver(Protocol):
    def resolve(self, model: str, headers: Mapping[str, str]) -> ResolvedModel: ...


class PassthroughResolver:
    """Model resolution without resources: the model (or the rewrite header) goes through."""

    def __init__(self, criticality: Criticality = Criticality.STANDARD) -> None:
        self.criticality = criticality

    def resolve(self, model: str, headers: Mapping[str, str]) -> ResolvedModel:
        target = read_aliased(headers, MODEL_REWRITE) or model
        return ResolvedModel(
            incoming_model=model,
            target_model=target,
            criticality=self.criticality,
            priority=self.criticality.to_priority(),
        )


@dataclass(slots=True, eq=False)
class RoutingDecision:
    """Where one request goes, and what the response path needs to finish it.

    ``endpoint_header`` is the ``x-gateway-destination-endpoint`` value: the target then the
    fallbacks, ``ip:port`` joined with ``,``.
    """

    target: Endpoint
    fallbacks: tuple[Endpoint, ...]
    request: InferenceRequest
    result: SchedulingResult
    endpoint_header: str
    resolved: ResolvedModel
    inflight_tokens: int = 0
    prefill_tokens: int = 0  # of those, not cached on the target: its prefill-ledger charge
    completed: bool = False
    first_token_seen: bool = False  # handle_first_token ran: the prompt left the prefill ledger
    # --emit-endpoint-scores: ip:port -> weighted total of every endpoint the primary profile
    # scored (None when off or when the profile has no scorers).
    endpoint_scores: Mapping[str, float] | None = None
    queue_wait_s: float = 0.0  # time spent in flow control (0 on the fast path)
    # Headers PreRequest plugins set on the forwarded request (``UPSTREAM_HEADERS``).
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    # Dynamic metadata for the proxy, from ResponseMetadata plugins at completion.
    response_metadata: dict[str, dict[str, float]] = field(default_factory=dict)


def subset_candidates(
    endpoints: Sequence[Endpoint], subset_hint: Sequence[str] | None
) -> Sequence[Endpoint]:
    """Endpoints whose IP is in the hint (``ip:port`` or ``ip`` entries; ports are ignored).

    ``None`` (no hint) keeps everything; an empty hint keeps nothing, as upstream.
    """
    if subset_hint is None:
        return endpoints
    ips = {host_of(h) for h in subset_hint}
    return [e for e in endpoints if e.address in ips]


class Director:
    """Turns a parsed request into a :class:`RoutingDecision` or an :class:`EppError`."""

    def __init__(
        self,
        datastore: EndpointSource,
        resolver: Resolver | None,
        scheduler: Scheduler,
        saturation_detector: SaturationDetector,
        hooks: RequestHooks | Sequence[Plugin] = (),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        timings: PluginTimings | None = None,
        disable_subset_filter: bool = False,
        emit_endpoint_scores: bool = False,
        flow_control: FlowController | None = None,
        default_fairness_id: str = DEFAULT_FAIRNESS_ID,
    ) -> None:
        self.emit_endpoint_scores = emit_endpoint_scores
        self.datastore = datastore
        self.resolver: Resolver = resolver or PassthroughResolver()
        self.scheduler = scheduler
        self.admission = AdmissionController(saturation_detector)
        self.rng = rng or random.Random()
        self.clock = clock
        self.disable_subset_filter = disable_subset_filter
        self.timings = timings
        self._hook_series: dict[tuple[str, int], deque[float]] = {}  # (point, id(hook)) -> buffer
        self.flow_control = flow_control
        self.default_fairness_id = default_fairness_id
        classified = hooks if isinstance(hooks, RequestHooks) else RequestHooks.of(hooks)
        self._prepare = classified.prepare_data
        self._pre_request = classified.pre_request
        self._complete = classified.response_complete
        self._prefetch = classified.prefetch
        self.hooks = classified  # the request hooks, classified once

    def handle_request(
        self,
        parsed: ParsedRequest,
        headers: Mapping[str, str],
        request_id: str,
        subset_hint: Sequence[str] | None = None,
        *,
        trace: CycleTrace | None = None,
    ) -> RoutingDecision:
        """Decide where ``parsed`` goes. ``headers`` must have lowercase keys.

        Raises ``BadRequestError`` (400; also ``ModelNotFoundError`` 404 when the resolver is
        configured to reject unknown models), ``NoCandidatesError`` (503),
        ``PoolExhaustedError`` (429); from request-control plugins ``ScreenedOutError`` (503)
        and ``AdmissionDeniedError`` (500).
        """
        resolved = self.resolver.resolve(parsed.model, headers)
        request = self._build_request(parsed, headers, request_id, resolved)
        now = self.clock()
        candidates = self._candidates(subset_hint, trace, allow_empty_pool=False)
        if self.flow_control is None:
            if trace is not None:
                _note_admission(trace, request, self.admission.detector, candidates, now)
            self.admission.admit(request, candidates, now)
        elif trace is not None:
            _note_flow_control(trace, request, self.flow_control, now)
        return self._schedule(parsed, request, resolved, candidates, now, trace, None)

    async def handle_request_async(
        self,
        parsed: ParsedRequest,
        headers: Mapping[str, str],
        request_id: str,
        subset_hint: Sequence[str] | None = None,
        *,
        trace: CycleTrace | None = None,
    ) -> RoutingDecision:
        """:meth:`handle_request` for the serving path: tokenisation off the event loop, and,
        with flow control, the wait for dispatch between admission and scheduling.

        Flow control adds 429 (``rejected-saturated``, ``rejected-ttl-expired``) and 503
        (``rejected-no-endpoints``, ``rejected-shutting-down``) outcomes; cancellation (the
        client went away) removes the request from its queue at once.
        """
        fc = self.flow_control
        if fc is None and not self._prefetch:
            return self.handle_request(parsed, headers, request_id, subset_hint, trace=trace)
        resolved = self.resolver.resolve(parsed.model, headers)
        request = self._build_request(parsed, headers, request_id, resolved)
        received = self.clock()
        if fc is None:
            candidates = self._candidates(subset_hint, trace, allow_empty_pool=False)
            self.admission.admit(request, candidates, received)
        else:
            # Fail fast when a subset hint matches nothing in a non-empty pool; an empty pool
            # is a waiting room (noEndpointRequestTTL), as upstream's scale-from-zero.
            self._candidates(subset_hint, None, allow_empty_pool=True)
        prefetched = await self._run_prefetch(request)

        def dispatch() -> RoutingDecision:
            now = self.clock()
            candidates = self._candidates(subset_hint, trace, allow_empty_pool=False)
            return self._schedule(parsed, request, resolved, candidates, now, trace, prefetched)

        if fc is None:
            return dispatch()
        tokens = _estimate_tokens(parsed)
        prompt = len(parsed.prompt_text) // AVG_CHARS_PER_TOKEN
        item = QueueItem(
            request_id=request_id,
            priority=request.priority,
            fairness_id=request.fairness_id,
            size_bytes=len(parsed.raw),
            enqueued_at=received,
            slo_deadline=slo_deadline(received, headers),
            prompt_tokens=prompt,
            output_tokens=tokens - prompt,
            model_name=request.incoming_model,
            target_model_name=request.target_model,
        )
        decision = await fc.admit(item, dispatch, abandon=self.handle_response_complete)
        decision.queue_wait_s = self.clock() - received
        if trace is not None:
            trace.notes.append(
                f"flow control: band {request.priority}, flow {request.fairness_id!r}, "
                f"queue wait {decision.queue_wait_s * 1000:.1f} ms"
            )
        return decision

    async def _run_prefetch(self, request: InferenceRequest) -> dict[str, object] | None:
        """Run the CPU-heavy ``prefetch`` hooks in worker threads (tokenizers release the GIL)."""
        if not self._prefetch:
            return None
        out: dict[str, object] = {}
        for hook in self._prefetch:
            fn = hook.prefetch
            try:
                out[hook.typed_name.name] = await asyncio.to_thread(fn, request)
            except Exception:
                log.exception("prefetch hook %s failed; continuing", hook.typed_name)
        return out

    def _candidates(
        self, subset_hint: Sequence[str] | None, trace: CycleTrace | None, *, allow_empty_pool: bool
    ) -> Sequence[Endpoint]:
        snapshot = _routable(self.datastore.health, self.datastore.endpoints())
        hint = None if self.disable_subset_filter else subset_hint
        candidates = subset_candidates(snapshot, hint)
        if trace is not None:
            _note_candidates(trace, snapshot, candidates, hint)
        if not candidates and not (allow_empty_pool and not snapshot):
            raise NoCandidatesError(NO_CANDIDATES_MESSAGE)
        return candidates

    def _schedule(
        self,
        parsed: ParsedRequest,
        request: InferenceRequest,
        resolved: ResolvedModel,
        candidates: Sequence[Endpoint],
        now: float,
        trace: CycleTrace | None,
        prefetched: dict[str, object] | None,
    ) -> RoutingDecision:
        candidates = run_screeners(self.hooks.screeners, request, candidates)
        state = CycleState(now)
        if prefetched is not None:
            state.write(PREFETCHED, prefetched)
        for hook in self._prepare:
            self._run_hook("PrepareData", hook, hook.prepare_data, state, request, candidates)
        run_admitters(self.hooks.admitters, request, candidates)

        scores: dict[str, dict[str, float]] | None = {} if self.emit_endpoint_scores else None
        try:
            result = self.scheduler.schedule(
                request, candidates, state=state, trace=trace, scores_out=scores
            )
        except PoolExhaustedError:
            raise
        except EppError as exc:
            raise PoolExhaustedError(f"failed to find target endpoint: {exc.message}") from exc
        primary = result.primary
        if primary is None or not primary.targets:
            raise PoolExhaustedError("failed to find target endpoint: no result")
        targets = primary.targets

        for pre in self._pre_request:
            self._run_hook("PreRequest", pre, pre.pre_request, state, request, result)

        target = targets[0]
        extra_headers: dict[str, str] | None = state.get(UPSTREAM_HEADERS, None)
        tokens = _estimate_tokens(parsed)
        prefill = _uncached_tokens(state, target.name, tokens)
        self.datastore.on_request_sent(
            target.name, tokens, model=request.target_model, prefill_tokens=prefill
        )
        return RoutingDecision(
            target=target,
            fallbacks=tuple(targets[1:]),
            request=request,
            result=result,
            endpoint_header=",".join(e.hostport for e in targets),
            resolved=resolved,
            inflight_tokens=tokens,
            prefill_tokens=prefill,
            endpoint_scores=_by_hostport(scores, result.primary_profile, candidates),
            upstream_headers=extra_headers or {},
        )

    def handle_first_token(self, decision: RoutingDecision) -> None:
        """The first response chunk of ``decision`` passed the EPP: the endpoint is done with its
        prompt, so it leaves the prefill ledger. Idempotent; a no-op after completion. Callers:
        the ext_proc response path (``full`` response mode sees the first chunk; in ``tap`` mode
        the body arrives only at the end, and without response-body processing it never does, so
        there the prompt is released at completion) and the virtual-time bench."""
        if decision.completed or decision.first_token_seen:
            return
        decision.first_token_seen = True
        self.datastore.on_first_token(
            decision.target.name, decision.prefill_tokens, load=decision.target.load
        )

    def handle_response_complete(
        self,
        decision: RoutingDecision,
        usage: Usage | None = None,
        *,
        status: int | None = None,
        served: str | None = None,
    ) -> None:
        """Finish ``decision``: in-flight count down, ResponseComplete hooks. Idempotent.

        ``status`` and ``served`` (the response's status and the endpoint that answered, when
        known) feed the datastore's passive health (``kvroute.datastore.health``).
        """
        if decision.completed:
            return
        decision.completed = True
        _record_health(self.datastore.health, decision.target.hostport, status, served)
        # ``load`` is the counter object the request was counted on: if the endpoint has since
        # been replaced under the same name (new address), its fresh counters stay untouched.
        self.datastore.on_request_finished(
            decision.target.name,
            decision.inflight_tokens,
            load=decision.target.load,
            model=decision.request.target_model,
            prefill_tokens=0 if decision.first_token_seen else decision.prefill_tokens,
        )
        for done in self._complete:
            self._run_hook(
                "ResponseComplete",
                done,
                done.response_complete,
                decision.request,
                decision.target,
                usage,
            )
        if self.hooks.response_metadata:
            collect_response_metadata(
                self.hooks.response_metadata, decision.request, usage, decision.response_metadata
            )
        if self.flow_control is not None:
            self.flow_control.notify()  # capacity freed: queued requests may go now

    def random_endpoint(self) -> Endpoint:
        """Any endpoint, for header-only requests (no body to schedule on). 500 when none."""
        endpoints = self.datastore.endpoints()
        if not endpoints:
            raise EppError(NO_ENDPOINTS_MESSAGE)
        return self.rng.choice(endpoints)

    def _build_request(
        self,
        parsed: ParsedRequest,
        headers: Mapping[str, str],
        request_id: str,
        resolved: ResolvedModel,
    ) -> InferenceRequest:
        body: Mapping[str, Any] = parsed.body
        if resolved.target_model != parsed.model:
            body = {**parsed.body, "model": resolved.target_model}
        fid = read_aliased(headers, FAIRNESS_ID)
        request = InferenceRequest(
            request_id=request_id,
            incoming_model=resolved.incoming_model,
            target_model=resolved.target_model,
            api=parsed.api,
            priority=resolved.priority,
            criticality=resolved.criticality,
            body=MappingProxyType(body),
            headers=headers,
            prompt_text=parsed.prompt_text,
            request_size_bytes=len(parsed.raw),
            stream=parsed.stream,
            media=parsed.media,
            fairness_id=fid or self.default_fairness_id,
        )
        if not self.hooks.header_processors:
            return request
        # the fairness header wins; else the agent-identity attribute a processor set
        attributes = run_header_processors(self.hooks.header_processors, request)
        fid = fid or attributes.get(AGENT_IDENTITY_ATTRIBUTE)
        return replace(request, attributes=attributes, fairness_id=fid or self.default_fairness_id)

    def _run_hook(
        self, point: str, hook: Plugin, method: Callable[..., None], *args: object
    ) -> None:
        """Run one hook; log (never propagate) its failure, and time it when timing is on."""
        t0 = perf_counter()
        try:
            method(*args)
        except Exception:
            log.exception("%s hook %s failed; continuing", point, hook.typed_name)
        if self.timings is not None:
            buf = self._hook_series.get((point, id(hook)))
            if buf is None:  # looked up once per hook: hooks live as long as the director
                tn = hook.typed_name
                buf = self._hook_series[point, id(hook)] = self.timings.series(
                    point, tn.type, tn.name
                )
            buf.append(perf_counter() - t0)


def _by_hostport(
    scores: Mapping[str, Mapping[str, float]] | None,
    profile: str,
    candidates: Sequence[Endpoint],
) -> dict[str, float] | None:
    """The primary profile's scores keyed by ``ip:port``, as upstream emits them."""
    totals = scores.get(profile) if scores else None
    if not totals:
        return None
    return {e.hostport: totals[e.name] for e in candidates if e.name in totals}


def _routable(health: PassiveHealth, snapshot: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The endpoints passive health has not ejected; all of them if it ejected every one (a
    pool-wide fault must still reach a server, as Envoy's panic threshold does)."""
    if health.all_routable():
        return snapshot
    routable = tuple(e for e in snapshot if health.routable(e.hostport))
    return routable or snapshot


def _record_health(
    health: PassiveHealth, picked: str, status: int | None, served: str | None
) -> None:
    if status is None:  # no answer at all: the client left, nothing learnt
        return
    if served and served != picked:
        health.failure(picked, f"request served by {served} after a retry")
    elif status >= 500:
        health.failure(picked, f"HTTP {status}")
    else:
        health.success(picked)


def _estimate_tokens(parsed: ParsedRequest) -> int:
    """Estimated prompt tokens, the datastore's in-flight token charge (upstream
    ``inflight-load-producer`` with its default ``addEstimatedOutputTokens: false``)."""
    return len(parsed.prompt_text) // AVG_CHARS_PER_TOKEN


def _uncached_tokens(state: CycleState, target: str, tokens: int) -> int:
    """The prompt tokens ``target`` must compute: ``tokens`` less what a prefix-cache producer
    found cached there this cycle (``PREFIX_CACHE_MATCH``); all of them without a producer."""
    info = state.get(PREFIX_CACHE_MATCH, None)
    if info is None:
        return tokens
    return max(0, tokens - info.cached_tokens.get(target, 0))


def _note_candidates(
    trace: CycleTrace,
    snapshot: Sequence[Endpoint],
    candidates: Sequence[Endpoint],
    hint: Sequence[str] | None,
) -> None:
    if hint is None:
        trace.notes.append(f"candidates: all {len(snapshot)} endpoints (no subset hint)")
    else:
        trace.notes.append(
            f"candidates: {len(candidates)} of {len(snapshot)} endpoints match subset hint "
            f"{list(hint)}"
        )


def _note_admission(
    trace: CycleTrace,
    request: InferenceRequest,
    detector: SaturationDetector,
    candidates: Sequence[Endpoint],
    now: float,
) -> None:
    saturation = detector.saturation(candidates, now)
    verdict = "saturated" if saturation >= 1.0 else "not saturated"
    if request.priority < 0:
        action = "sheddable request is shed" if saturation >= 1.0 else "sheddable request admitted"
    else:
        action = f"priority {request.priority} is never shed"
    trace.notes.append(
        f"admission: pool saturation {saturation:.3f} ({verdict}, {detector.typed_name}); {action}"
    )


def _note_flow_control(
    trace: CycleTrace, request: InferenceRequest, fc: FlowController, now: float
) -> None:
    saturation = fc.saturation(now)
    ceiling = fc.queues.settings.usage_limit.ceiling(request.priority, saturation)
    verdict = (
        "dispatched at once"
        if saturation < ceiling and fc.queues.count == 0
        else "would wait in its queue until the pool has room"
    )
    trace.notes.append(
        f"flow control: band {request.priority}, flow {request.fairness_id!r}; pool saturation "
        f"{saturation:.3f} vs ceiling {ceiling:g} ({fc.detector.typed_name}): {verdict}; "
        "queue wait 0 ms (dry run)"
    )
