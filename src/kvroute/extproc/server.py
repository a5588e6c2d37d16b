"""grpc.aio shell around :class:`~kvroute.extproc.stream.ExtProcStream`, plus gRPC health.

The servicer only moves messages between the gRPC stream and the state machine; every rule
lives in ``stream.py``. The stream is closed in a ``finally`` so completion is recorded when
Envoy ends the stream normally *and* when it cancels it (client disconnect), exactly once.

``tap`` response processing adds one unary method on the same server,
``/kvroute.tap.v1.ResponseTap/Report`` (raw bytes, no protobuf; see :mod:`kvroute.extproc.tap`):
Envoy's Lua filter calls it once at the end of each response, and the servicer hands the report
to the open stream it names. Over ``kvroute serve``'s private Unix socket the same report comes
as an HTTP/1.1 POST instead (:mod:`kvroute.extproc.tap_http`, a fraction of the CPU); both
transports end in :meth:`ExternalProcessor.handle_tap_report`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.extproc.backend import RoutingBackend
from kvroute.extproc.stream import ExtProcStream, ProtocolViolation, StreamOptions
from kvroute.extproc.tap import TAP_CLUSTER_PREFIX, TAP_SERVICE, TapReportError, parse_report
from kvroute.extproc.tap_wait import ReportWaits
from kvroute.hostport import format_hostport
from kvroute.observability import tracing

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# How long a tap-mode exchange whose stream ended waits for its report (Envoy sends it just
# before the response's last bytes, so normally it is there within milliseconds).
TAP_GRACE_S = 1.0
# With ``release_routed`` (``--release-routed-streams``) the stream ends as soon as the request
# is routed, and the report comes at the end of the whole response: an exchange is held this
# long for it. A client that went away mid-response sends no report (Envoy's Lua filter does
# not run for a reset stream), so its completion is recorded, as a disconnect, only then.
RELEASED_TAP_TTL_S = 3600.0


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """``envoy.service.ext_proc.v3.ExternalProcessor/Process``: one stream per HTTP request."""

    def __init__(
        self, backend: RoutingBackend, options: StreamOptions, *, release_routed: bool = False
    ) -> None:
        self._backend = backend
        self._options = options
        # Issue 20 finding 3. Envoy 1.40 answers a broken ext_proc stream whose request body
        # was FULL_DUPLEX_STREAMED with a local reply (a reset once the response started),
        # also under failure_mode_allow: an EPP that dies cuts every stream it still holds.
        # A stream the EPP ends itself (gRPC OK) is "processing complete" to Envoy, which then
        # forwards the rest of the exchange without it. In tap mode the EPP needs nothing
        # more once the request is routed (the Lua filter reports the response), so with
        # ``release_routed`` it ends the stream right there.
        self._release_routed = release_routed
        self.released_streams = 0
        self.active_streams = 0
        self._tapped: dict[str, ExtProcStream] = {}  # tap id -> open stream (tap mode)
        # Deadlines of the streams that wait for their report (closed, or routed by the Lua
        # transport): one loop timer for the earliest, not one per stream (tap_wait.py).
        self._waits = ReportWaits()
        self._wait_timer: asyncio.TimerHandle | None = None
        self.tap_cluster: str | None = None  # set when serving on TCP (build_ext_proc_server)
        self.late_tap_reports = 0

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        stream = ExtProcStream(self._backend, self._options)
        self.active_streams += 1
        if stream.tap_id:
            stream.tap_cluster = self.tap_cluster
            self._tapped[stream.tap_id] = stream
        trace_token = tracing.enter_grpc_call(context.invocation_metadata())
        released = False
        try:
            async for request in request_iterator:
                # Awaits routing (possibly a flow-control wait); cancelled when Envoy resets
                # the stream, which takes a queued request out of its queue.
                # Lazily: a big forwarded body's chunk messages are built as they go out.
                for response in await stream.areceive_iter(request):
                    yield response
                if self._release_routed and stream.awaiting_tap_report:
                    released = True  # returning ends the stream with gRPC OK
                    self.released_streams += 1
                    break
        except ProtocolViolation as exc:
            log.warning("ext_proc protocol violation: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            self.active_streams -= 1
            if stream.close():  # completion waits for the tap report, at most TAP_GRACE_S
                self._wait_for_report(stream, RELEASED_TAP_TTL_S if released else TAP_GRACE_S)
            elif stream.tap_id:
                self._tapped.pop(stream.tap_id, None)
            tracing.exit_grpc_call(trace_token)

    async def tap_report(
        self, payload: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        """``ResponseTap/Report``: one response's usage bytes from Envoy's Lua filter."""
        try:
            self.handle_tap_report(payload)
        except TapReportError as exc:
            log.warning("bad response tap report: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return b""

    def handle_tap_report(self, payload: bytes) -> None:
        """One report, whichever transport brought it (gRPC above, or the HTTP/1.1 socket of
        :mod:`kvroute.extproc.tap_http`); raises :class:`TapReportError` for a bad payload."""
        report = parse_report(payload)
        stream = self._tapped.get(report.tap_id)
        if stream is None:  # later than TAP_GRACE_S after its stream ended (EPP overloaded)
            self.late_tap_reports += 1
            level = logging.WARNING if self.late_tap_reports == 1 else logging.DEBUG
            log.log(
                level,
                "response tap report for %s came after its stream ended and the %.0f s grace "
                "(recorded as a disconnect, usage lost); further ones are logged at debug level",
                report.tap_id,
                TAP_GRACE_S,
            )
        else:
            stream.tap_report(report)
            if stream.completed:
                self._tapped.pop(report.tap_id, None)
                self._waits.discard(report.tap_id)

    def hold_for_report(self, stream: ExtProcStream, ttl_s: float | None = None) -> None:
        """A stream routed outside ``Process`` (the Lua transport, :mod:`kvroute.extproc.
        lua_route`) waits here for its tap report, at most ``ttl_s`` (default
        ``RELEASED_TAP_TTL_S``; a disconnect then)."""
        self._tapped[stream.tap_id] = stream
        self._wait_for_report(stream, RELEASED_TAP_TTL_S if ttl_s is None else ttl_s)

    def report_disconnect(self, tap_id: str) -> bool:
        """The gateway saw the exchange ``tap_id`` end without its report (the client left):
        complete it now as a disconnect. False when it is not held (reported already)."""
        stream = self._tapped.pop(tap_id, None)
        self._waits.discard(tap_id)
        if stream is None:
            return False
        stream.expire_tap()
        return True

    @property
    def waiting_reports(self) -> int:
        """Exchanges whose report is awaited with a deadline (what the expiry keeps)."""
        return len(self._waits)

    def _wait_for_report(self, stream: ExtProcStream, ttl_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._waits.add(stream.tap_id, ttl_s, loop.time())
        timer = self._wait_timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._wait_timer = loop.call_at(deadline, self._expire_due)

    def _expire_due(self) -> None:
        """The earliest wait ran out (or its stream completed since: then nothing is due):
        complete the due exchanges as disconnects, arm the timer for the next deadline."""
        loop = asyncio.get_running_loop()
        self._wait_timer = None
        # A timer may run up to the clock's resolution early: 1 ms of slack, never a busy loop.
        for tap_id in self._waits.pop_due(loop.time() + 1e-3):
            stream = self._tapped.pop(tap_id, None)
            if stream is None:
                continue
            try:
                stream.expire_tap()
            except Exception:  # bookkeeping: one failure must not strand the others
                log.exception("completing exchange %s as a disconnect failed", tap_id)
        deadline = self._waits.next_deadline()
        if deadline is not None:
            self._wait_timer = loop.call_at(deadline, self._expire_due)

    def tap_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            TAP_SERVICE, {"Report": grpc.unary_unary_rpc_method_handler(self.tap_report)}
        )


class ReadinessHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """gRPC health with upstream semantics (no leader election): every service name is
    SERVING once the pool has synced (``ready()`` true), NOT_SERVING before.

    ``serving(service)``, when given, answers per service name instead (with leader election
    upstream keeps ``liveness`` SERVING on followers; see ``kvroute.k8s.source``)."""

    def __init__(
        self, ready: Callable[[], bool], serving: Callable[[str], bool] | None = None
    ) -> None:
        self._ready = ready
        self._serving = serving

    def _status(self, service: str = "") -> Any:
        ok = self._serving(service) if self._serving is not None else self._ready()
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        return serving if ok else not_serving

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(0.5)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    cert_chain: bytes
    private_key: bytes
    # mTLS (``--require-client-cert``, issue 20 finding 7): clients must present a certificate
    # that chains to this CA bundle, else the TLS handshake fails.
    client_ca: bytes | None = None


def _add_port(
    server: grpc.aio.Server, host: str, port: int, tls: TlsMaterial | None, uds: str | None = None
) -> int:
    address = f"unix:{uds}" if uds else format_hostport(host, port)
    if tls is None:
        return server.add_insecure_port(address)
    creds = grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )
    return server.add_secure_port(address, creds)


def build_ext_proc_server(
    processor: ExternalProcessor,
    *,
    host: str,
    port: int,
    tls: TlsMaterial | None,
    health: ReadinessHealth | None = None,
    uds: str | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The ext_proc server (optionally also serving health, upstream ``--health-checking``).

    Returns the server (not started) and the bound port (useful when ``port`` is 0; with
    ``uds``, a Unix socket path, gRPC reports 1 for success and 0 for failure).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    server.add_generic_rpc_handlers((processor.tap_handler(),))
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = _add_port(server, host, port, tls, uds)
    processor.tap_cluster = None if uds else f"{TAP_CLUSTER_PREFIX}{bound}"
    return server, bound


def build_health_server(
    health: ReadinessHealth, *, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """The plaintext gRPC health server on ``--grpc-health-port`` (as upstream)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server, server.add_insecure_port(format_hostport(host, port))
