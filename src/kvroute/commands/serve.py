"""`kvroute serve`: the EPP and a real Envoy in front of named model servers, in one command.

The EPP runs in this process (asyncio); Envoy runs as a child process configured by kvroute and
logs to ``.kvroute/envoy-<port>.log``. Prints the URL once both are ready; Ctrl-C or SIGTERM
stops both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from kvroute.errors import ConfigError
from kvroute.gateway.edge import EdgeOptions
from kvroute.settings import (
    EppSettings,
    add_epp_arguments,
    duration,
    flags,
    parse_bool,
    settings_from_args,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="gateway listener port")
    parser.add_argument("--host", default="127.0.0.1", help="gateway listener address")
    parser.add_argument(
        "--failure-mode",
        choices=["FailClose", "FailOpen"],
        default="FailClose",
        help="when the EPP is unreachable: 503 (FailClose) or route round-robin (FailOpen: "
        "with the EPP's model rewrites from --resources, and, in tap mode, streams already "
        "routed outlive an EPP crash; see docs/security.md)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path(".kvroute"), help="where Envoy's log goes"
    )
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--transport",
        choices=["ext_proc", "lua", "auto"],
        default="auto",
        help="how Envoy asks the EPP for each routing decision: lua (no ext_proc: Envoy's Lua "
        "filter sends headers and body in one HTTP/1.1 call over a private Unix socket; needs "
        "--response-processing tap, the HTTP tap report, no TLS and one EPP; about half the "
        "EPP's CPU per request, see docs/benchmarks.md) or ext_proc (an ext_proc stream per "
        "request, what any other gateway uses); auto (default): lua where it can run, else "
        "ext_proc",
    )
    _add_edge_arguments(parser)
    parser.add_argument(
        "--epp-replicas",
        type=int,
        default=1,
        help="run N active-active EPP replicas as child processes behind the one Envoy, "
        "sharing state over CurveZMQ (default 1: the EPP runs in this process)",
    )
    add_epp_arguments(parser, gateway=True)


def _add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    """What the generated Envoy lets through (issue 20); defaults in ``EdgeOptions``."""
    e = parser.add_argument_group("gateway edge")
    e.add_argument(
        "--expose-path-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="also route this path prefix to the pool (repeatable); only the inference APIs "
        "are routed by default, everything else is a 404",
    )
    e.add_argument(
        "--trust-client-routing-headers",
        action="store_true",
        help="let clients set x-gateway-model-name-rewrite/x-llm-d-model-name-rewrite "
        "(stripped by default)",
    )
    e.add_argument(
        "--strip-client-objective-header",
        action="store_true",
        help="also strip x-gateway-inference-objective/x-llm-d-inference-objective from clients",
    )
    e.add_argument(
        "--max-request-headers",
        type=int,
        default=100,
        metavar="N",
        help="more client request headers than this get a 431",
    )
    e.add_argument(
        "--max-request-headers-kb",
        type=int,
        default=60,
        metavar="KIB",
        help="client request headers larger than this in total get a 431",
    )
    e.add_argument(
        "--first-byte-timeout",
        type=duration,
        default="5m",
        help="504 (retried on the next endpoint) when an endpoint sends no response byte "
        "within this; 0 = none",
    )
    e.add_argument(
        "--stream-idle-timeout",
        type=duration,
        default="1h",
        help="504/reset when a request or response stream is idle this long",
    )
    e.add_argument(
        "--outlier-detection",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="eject an endpoint from Envoy's pool after consecutive 5xx/connect failures",
    )


def _edge_options(args: argparse.Namespace) -> EdgeOptions:
    return EdgeOptions(
        extra_path_prefixes=tuple(args.expose_path_prefix),
        trust_client_routing_headers=args.trust_client_routing_headers,
        strip_client_objective_header=args.strip_client_objective_header,
        max_request_headers=args.max_request_headers,
        max_request_headers_kb=args.max_request_headers_kb,
        first_byte_timeout_s=args.first_byte_timeout,
        stream_idle_timeout_s=args.stream_idle_timeout,
        outlier_detection=args.outlier_detection,
    )


async def _serve(args: argparse.Namespace) -> int:
    from kvroute.gateway.bootstrap import FailureMode
    from kvroute.gateway.envoy import find_envoy
    from kvroute.gateway.gateway import Gateway

    find_envoy()  # before the EPP binds anything: a base install names the [gateway] extra

    settings = settings_from_args(args, bind_host="127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.epp_replicas != 1:
        if args.transport == "lua":
            raise ConfigError("--transport lua runs one EPP; --epp-replicas needs ext_proc")
        return await _serve_replicas(args, settings, stop)
    gateway = Gateway(
        settings=settings,
        port=args.port,
        host=args.host,
        failure_mode=FailureMode(args.failure_mode),
        log_dir=args.log_dir,
        envoy_concurrency=args.envoy_concurrency,
        edge=_edge_options(args),
        drain_timeout_s=settings.drain_timeout_s,  # Envoy drains first, then the EPP
        transport=args.transport,
    )
    async with gateway as gw:
        assert gw.envoy is not None
        print(f"kvroute serve: gateway ready at {gw.url}", flush=True)
        print(
            f"  EPP {_epp_address(gw)}, metrics :{gw.epp.ports.metrics}/metrics, "
            f"{len(gw.epp.datastore)} endpoint(s); Envoy pid {gw.envoy.pid}; "
            f"Envoy log: {gw.envoy.log_path}",
            flush=True,
        )
        await stop.wait()
    print("kvroute serve: stopped", flush=True)
    return 0


def _epp_address(gw: Any) -> str:
    """Where Envoy asks the EPP: its route socket (``--transport lua``) or its ext_proc port."""
    if gw.transport == "lua":
        return f"route socket unix:{gw.epp.route_socket} (transport lua)"
    uds = gw.epp.settings.grpc_uds
    if uds is not None:
        return f"ext_proc unix:{uds}"
    return f"ext_proc :{gw.epp.ports.grpc}"


# Flags the replica set sets itself for each child (ports, loopback, sync peers and key).
_PER_REPLICA = frozenset(
    {
        "grpc_port", "grpc_health_port", "metrics_port", "secure_serving", "health_checking",
        "sync_port", "sync_peers", "sync_key_file", "sync_authorized_keys", "replica_id",
        "sync_lease_group", "sync_advertise",
    }
)  # fmt: skip


def epp_child_args(args: argparse.Namespace) -> list[str]:
    """The EPP flags of a ``serve`` command line, as ``kvroute epp`` arguments: every flag whose
    parsed value differs from its default (the replica set adds the per-replica ones)."""
    out: list[str] = []
    probe = argparse.ArgumentParser()
    add_epp_arguments(probe, gateway=True)
    defaults = probe.parse_args([])
    for f, spec in flags():
        if f.name in _PER_REPLICA:
            continue
        value = getattr(args, f.name)
        if value == getattr(defaults, f.name):
            continue
        for v in value if spec.repeat else [value]:
            text = str(v).lower() if isinstance(v, bool) else str(getattr(v, "value", v))
            out.append(f"{spec.name}={text}")
    return out


async def _serve_replicas(
    args: argparse.Namespace, settings: EppSettings, stop: asyncio.Event
) -> int:
    from kvroute.gateway.bootstrap import BootstrapOptions, FailureMode, build_bootstrap
    from kvroute.gateway.envoy import EnvoyProcess
    from kvroute.gateway.failopen import FailOpenRewrites, rewrites_from_settings
    from kvroute.gateway.gateway import failopen_settings, pool_speaks_h2c
    from kvroute.gateway.replicas import EppReplicaSet

    # serve's --response-processing default (tap) is not kvroute epp's (full): always passed.
    child = [*epp_child_args(args), f"--response-processing={settings.response_processing.value}"]
    failopen = FailureMode(args.failure_mode) is FailureMode.FAIL_OPEN
    if failopen and failopen_settings(settings).release_routed_streams:
        child.append("--release-routed-streams=true")  # streams outlive a replica's crash
    replicas = EppReplicaSet(args.epp_replicas, child, args.log_dir)
    async with replicas:
        opts = BootstrapOptions(
            listen_host=args.host,
            port=args.port,
            epp_endpoints=replicas.endpoints,
            epp_tls=False,
            endpoints=settings.endpoints,
            failure_mode=FailureMode(args.failure_mode),
            failopen_rewrites=rewrites_from_settings(settings) if failopen else FailOpenRewrites(),
            response_processing=settings.response_processing.value,
            request_body_buffer_limit_bytes=settings.max_request_body_bytes,
            edge=_edge_options(args),
            upstream_h2c=pool_speaks_h2c(settings),
        )
        envoy = EnvoyProcess(
            build_bootstrap(opts), log_dir=args.log_dir, concurrency=args.envoy_concurrency
        )
        await envoy.start()
        try:
            print(
                f"kvroute serve: gateway ready at http://{args.host}:{envoy.port} with "
                f"{len(replicas.replicas)} EPP replicas (ext_proc "
                + ", ".join(f":{p}" for _, p in replicas.endpoints)
                + f"); logs in {args.log_dir}",
                flush=True,
            )
            await stop.wait()
        finally:
            await envoy.stop()
    print("kvroute serve: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"kvroute serve: {exc.message}")
        return 2
