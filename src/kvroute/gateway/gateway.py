"""One-process gateway: the EPP (in-process asyncio) plus a real Envoy child in front of it.

``async with Gateway(endpoints=["http://127.0.0.1:8001", ...]) as gw: gw.url`` is the Python API
``kvroute serve``, the demo and the benchmarks use. Envoy listens on ``port`` (0 = any free
port, read back from Envoy's admin API). With ``private_sockets`` (the default) Envoy reaches the
EPP's ext_proc server over a Unix socket, and serves its own admin API on another, both in a
fresh directory only this user can enter (mode 0700, removed on exit): no other local user can
get routing decisions, inflate in-flight counts or read ``/config_dump`` (issue 20 finding 7).
The EPP's health and metrics ports stay loopback TCP; an explicit ``grpc_port`` (``kvroute serve
--grpc-port N``) keeps ext_proc on that TCP port, as before.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from kvroute.app import BackendFactory, EppApp
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.errors import ConfigError
from kvroute.gateway.bootstrap import (
    EPP_CLUSTER,
    BootstrapOptions,
    FailureMode,
    build_bootstrap,
)
from kvroute.gateway.edge import EdgeOptions
from kvroute.gateway.envoy import EnvoyProcess, ensure_port_free
from kvroute.gateway.failopen import FailOpenRewrites, rewrites_from_settings
from kvroute.hostport import format_hostport
from kvroute.observability.tracing import TracingConfig
from kvroute.settings import EppSettings, parse_endpoint_url

DEFAULT_LOG_DIR = Path(".kvroute")
# How Envoy asks the EPP for a routing decision: an ext_proc stream (upstream's protocol), or
# one HTTP/1.1 call from Envoy's Lua filter (kvroute.gateway.request_lua; tap responses only).
TRANSPORTS = ("ext_proc", "lua", "auto")
LUA_BUFFER_SLACK = 1024 * 1024
log = logging.getLogger(__name__)


class Gateway:
    """EPP + Envoy; see the module docstring. Attributes are valid inside the ``async with``."""

    def __init__(
        self,
        endpoints: Sequence[str] = (),
        *,
        resources: Sequence[Path] = (),
        config: Path | None = None,
        config_text: str | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        failure_mode: FailureMode = FailureMode.FAIL_CLOSE,
        response_processing: ResponseProcessing = ResponseProcessing.TAP,
        secure_serving: bool = False,
        metrics_port: int = 0,
        log_dir: Path = DEFAULT_LOG_DIR,
        envoy_concurrency: int = 1,
        upstream_lb: str = "override_host",
        settings: EppSettings | None = None,
        backend_factory: BackendFactory | None = None,
        edge: EdgeOptions | None = None,
        private_sockets: bool = True,
        drain_timeout_s: float = 30.0,
        upstream_h2c: bool | None = None,
        transport: str = "auto",
    ) -> None:
        base = settings or EppSettings(
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=metrics_port,
            bind_host="127.0.0.1",
            endpoints=tuple(parse_endpoint_url(u) for u in endpoints),
            resources=tuple(resources),
            config_file=config,
            config_text=config_text,
            secure_serving=secure_serving,
            response_processing=response_processing,
            health_checking=True,  # Envoy health-checks the ext_proc port (see bootstrap)
        )
        if failure_mode is FailureMode.FAIL_OPEN:
            base = failopen_settings(base)
        self.settings = base
        self.epp = EppApp(base, backend_factory=backend_factory)
        if transport not in TRANSPORTS:
            raise ConfigError(f"--transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        if transport == "auto":
            transport = "lua" if lua_fits(base, private_sockets) else "ext_proc"
        # lua (issue 19): no ext_proc filter; Envoy's Lua asks the EPP's route socket.
        self.transport = transport
        self.epp.lua_route = transport == "lua"
        self._host = host
        self._port = port
        self._failure_mode = failure_mode
        self._log_dir = log_dir
        self._concurrency = envoy_concurrency
        self._upstream_lb = upstream_lb
        self.edge = edge or EdgeOptions()
        self._private_sockets = private_sockets
        self.drain_timeout_s = drain_timeout_s
        # None: as the served InferencePool's appProtocol says (kubernetes.io/h2c or http).
        self._upstream_h2c = upstream_h2c
        self.socket_dir: Path | None = None
        self.envoy: EnvoyProcess | None = None
        self.url = ""

    def bootstrap_options(self) -> BootstrapOptions:
        s = self.settings
        return BootstrapOptions(
            edge=self.edge,
            listen_host=self._host,
            port=self._port,
            epp_host="127.0.0.1",
            epp_port=self.epp.ports.grpc,
            epp_uds=str(s.grpc_uds) if s.grpc_uds is not None else None,
            admin_uds=str(self.socket_dir / "admin.sock") if self.socket_dir else None,
            tap_http_uds=str(self.epp.tap_http_socket) if self.epp.tap_http_socket else None,
            route_uds=str(self.epp.route_socket) if self.epp.route_socket else None,
            ended_fifo=str(self.epp.ended_fifo) if self.epp.ended_fifo else None,
            epp_tls=s.secure_serving,
            endpoints=s.endpoints,
            failure_mode=self._failure_mode,
            failopen_rewrites=rewrites_from_settings(s)
            if self._failure_mode is FailureMode.FAIL_OPEN
            else FailOpenRewrites(),
            response_processing=s.response_processing.value,
            upstream_lb=self._upstream_lb,
            epp_health_check=s.health_checking,
            # lua: Envoy buffers the body before the EPP sees it; a little over the EPP's limit
            # so that a body just over it gets the EPP's 413 (far over: Envoy's own, early).
            request_body_buffer_limit_bytes=s.max_request_body_bytes
            + (LUA_BUFFER_SLACK if self.transport == "lua" else 0),
            upstream_h2c=self._upstream_h2c
            if self._upstream_h2c is not None
            else pool_speaks_h2c(s),
            **_tracing_options(s),
        )

    async def __aenter__(self) -> Gateway:
        ensure_port_free(self._host, self._port)  # before the EPP binds anything
        # An explicit --grpc-port is honoured (TCP, as before): the operator wants the EPP
        # reachable there; private sockets otherwise.
        private = self._private_sockets and self.settings.grpc_port == 0
        if self.transport == "lua" and not private:
            raise ConfigError(
                "--transport lua needs kvroute serve's private sockets (no --grpc-port)"
            )
        if private and self.settings.grpc_uds is None:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="kvroute-"))  # mode 0700
            self.settings = dataclasses.replace(
                self.settings, grpc_uds=self.socket_dir / "epp.sock"
            )
            self.epp.settings = self.settings
        try:
            await self.epp.__aenter__()
        except BaseException:
            self._remove_socket_dir()
            raise
        try:
            bootstrap = build_bootstrap(self.bootstrap_options())
            self.envoy = EnvoyProcess(
                bootstrap,
                log_dir=self._log_dir,
                concurrency=self._concurrency,
                # lua: disconnects reach the EPP through an access log; flushed at 50 ms
                file_flush_interval_ms=50 if self.transport == "lua" else None,
            )
            await self.envoy.start()
            if self.settings.health_checking and not await self.envoy.wait_cluster_healthy(
                EPP_CLUSTER, timeout_s=10.0
            ):
                log.warning("Envoy has not seen the EPP healthy yet; first requests may get 503")
        except BaseException as exc:
            await self.epp.__aexit__(type(exc), exc, exc.__traceback__)
            self._remove_socket_dir()
            raise
        self.url = f"http://{format_hostport(self._host, self.envoy.port)}"
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.envoy is not None:
                # In-flight streams finish before Envoy and then the EPP stop (the EPP must stay
                # up while they run: it sees their responses).
                left = await self.envoy.drain(self.drain_timeout_s)
                if left:
                    log.warning("drain timed out with %d request(s) in flight; cutting them", left)
                await self.envoy.stop()
        finally:
            try:
                await self.epp.__aexit__(et, e, tb)
            finally:
                self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def lua_fits(s: EppSettings, private_sockets: bool = True) -> bool:
    """``--transport auto``: lua where it can run (tap with the HTTP report over the private
    sockets, no TLS, no explicit --grpc-port), ext_proc otherwise."""
    return (
        private_sockets
        and s.grpc_port == 0
        and s.response_processing is ResponseProcessing.TAP
        and s.tap_report == "http"
        and not s.secure_serving
    )


def failopen_settings(s: EppSettings) -> EppSettings:
    """FailOpen: in tap mode the EPP lets go of each ext_proc stream once it is routed, so an
    EPP that dies does not take the running streams with it (``--release-routed-streams``)."""
    if s.response_processing is ResponseProcessing.TAP and not s.release_routed_streams:
        return dataclasses.replace(s, release_routed_streams=True)
    return s


def _tracing_options(s: EppSettings) -> dict[str, Any]:
    """Envoy traces to the EPP's collector, at the EPP's ratio, when the EPP traces."""
    config = TracingConfig.resolve(s.tracing, s.tracing_endpoint, s.tracing_sampling_ratio)
    if not config.enabled:
        return {}
    parts = urlsplit(config.endpoint if "//" in config.endpoint else f"//{config.endpoint}")
    if parts.hostname is None:
        raise ConfigError(f"--tracing-endpoint {config.endpoint!r}: expected http://HOST:PORT")
    return {
        "tracing_collector": (parts.hostname, parts.port or 4317),
        "tracing_sampling_percent": config.sampling_ratio * 100.0,
    }


def pool_speaks_h2c(settings: EppSettings) -> bool:
    """True when the InferencePool of ``--resources`` declares ``appProtocol: kubernetes.io/h2c``
    (the EPP validated the files already; a pool that cannot be chosen means HTTP/1.1)."""
    if not settings.resources:
        return False
    from kvroute.config.resources import load_resources

    try:
        resources = load_resources(list(settings.resources))
        if not resources.pools:
            return False
        pool = resources.pool(settings.pool_name or None, settings.pool_namespace)
    except ConfigError:  # reported by the EPP itself, with its own message
        return False
    return getattr(pool, "app_protocol", "http") == "kubernetes.io/h2c"
