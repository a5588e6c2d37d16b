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
from kvroute.settings import add_epp_arguments, duration, parse_bool, settings_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="gateway listener port")
    parser.add_argument("--host", default="127.0.0.1", help="gateway listener address")
    parser.add_argument(
        "--failure-mode",
        choices=["FailClose", "FailOpen"],
        default="FailClose",
        help="when the EPP is unreachable: 503 (FailClose) or route round-robin (FailOpen)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path(".kvroute"), help="where Envoy's log goes"
    )
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_edge_arguments(parser)
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
    gateway = Gateway(
        settings=settings,
        port=args.port,
        host=args.host,
        failure_mode=FailureMode(args.failure_mode),
        log_dir=args.log_dir,
        envoy_concurrency=args.envoy_concurrency,
        edge=_edge_options(args),
        drain_timeout_s=settings.drain_timeout_s,  # Envoy drains first, then the EPP
    )
    async with gateway as gw:
        assert gw.envoy is not None
        print(f"kvroute serve: gateway ready at {gw.url}", flush=True)
        print(
            f"  EPP ext_proc {_ext_proc_address(gw)}, metrics :{gw.epp.ports.metrics}/metrics, "
            f"{len(gw.epp.datastore)} endpoint(s); Envoy pid {gw.envoy.pid}; "
            f"Envoy log: {gw.envoy.log_path}",
            flush=True,
        )
        await stop.wait()
    print("kvroute serve: stopped", flush=True)
    return 0


def _ext_proc_address(gw: Any) -> str:
    uds = gw.epp.settings.grpc_uds
    return f"unix:{uds}" if uds is not None else f":{gw.epp.ports.grpc}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"kvroute serve: {exc.message}")
        return 2
