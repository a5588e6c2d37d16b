"""`kvroute epp`: the Endpoint Picker alone (Envoy or another gateway runs elsewhere).

Upstream's flags and defaults (``--grpc-port 9002``, ``--grpc-health-port 9003``,
``--metrics-port 9090``, TLS on with a self-signed certificate, ...) plus ``--endpoint URL``
(repeatable) to name model servers without Kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from kvroute.errors import ConfigError
from kvroute.settings import add_epp_arguments, settings_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_epp_arguments(parser)
    parser.add_argument("--bind", default="0.0.0.0", help="address the EPP's servers bind")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


async def _serve(args: argparse.Namespace) -> int:
    from kvroute.app import EppApp

    settings = settings_from_args(args, bind_host=args.bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EppApp(settings) as app:
        p = app.ports
        tls = "TLS" if app.tls else "plaintext"
        print(
            f"kvroute epp: ext_proc on {settings.bind_host}:{p.grpc} ({tls}), "
            f"health on :{p.health}, metrics on :{p.metrics}/metrics; "
            f"{len(app.datastore)} endpoint(s)",
            flush=True,
        )
        await stop.wait()
    print("kvroute epp: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"kvroute epp: {exc.message}")
        return 2
