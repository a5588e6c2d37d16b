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

from kvroute.errors import ConfigError
from kvroute.settings import add_epp_arguments, settings_from_args


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
    add_epp_arguments(parser, gateway=True)


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
    )
    async with gateway as gw:
        assert gw.envoy is not None
        print(f"kvroute serve: gateway ready at {gw.url}", flush=True)
        print(
            f"  EPP ext_proc :{gw.epp.ports.grpc}, metrics :{gw.epp.ports.metrics}/metrics, "
            f"{len(gw.epp.datastore)} endpoint(s); Envoy log: {gw.envoy.log_path}",
            flush=True,
        )
        await stop.wait()
    print("kvroute serve: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"kvroute serve: {exc.message}")
        return 2
