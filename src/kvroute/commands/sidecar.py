"""``kvroute sidecar``: the P/D routing sidecar, run beside a decode model server.

Listens on ``--port`` (the port the InferencePool targets) and proxies to the model server on
``--model-server-port``; a request the EPP tagged with ``x-prefiller-host-port`` is prefilled on
that server first and decoded locally with the KV cache it hands over
(:mod:`kvroute.sidecar.core`). Flags follow llm-d-router's sidecar where they exist
(``--port`` 8000, ``--model-server-port`` 8200, ``--kv-connector`` nixlv2,
``--prefill-max-retries`` 0, ``--data-parallel-size`` 1); ``--prefill-timeout`` is kvroute's.
"""

from __future__ import annotations

import argparse
import logging

KV_CONNECTORS = ("nixlv2",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="listener port (default 8000)")
    parser.add_argument("--host", default="0.0.0.0", help="listener address")
    parser.add_argument(
        "--model-server-port", type=int, default=8200, help="the local model server's port"
    )
    parser.add_argument("--model-server-host", default="127.0.0.1", help="the model server host")
    parser.add_argument(
        "--kv-connector",
        default="nixlv2",
        help="KV transfer protocol; only nixlv2 (vLLM NixlConnector) is implemented",
    )
    parser.add_argument(
        "--prefill-timeout", type=float, default=60.0, help="seconds before local prefill"
    )
    parser.add_argument("--prefill-max-retries", type=int, default=0, help="extra prefill tries")
    parser.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="DP ranks on consecutive ports from --port / --model-server-port (default 1)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from kvroute.sidecar.proxy import Sidecar, SidecarOptions

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    if args.kv_connector not in KV_CONNECTORS:
        print(
            f"kvroute sidecar: --kv-connector {args.kv_connector!r} is not implemented "
            f"(supported: {', '.join(KV_CONNECTORS)})"
        )
        return 2
    if args.prefill_max_retries < 0 or args.prefill_timeout <= 0 or args.data_parallel_size < 1:
        print(
            "kvroute sidecar: --prefill-max-retries must be >= 0, --prefill-timeout > 0 and "
            "--data-parallel-size >= 1"
        )
        return 2
    sidecar = Sidecar(
        SidecarOptions(
            model_server=f"http://{args.model_server_host}:{args.model_server_port}",
            prefill_timeout_s=args.prefill_timeout,
            prefill_max_retries=args.prefill_max_retries,
            data_parallel_size=args.data_parallel_size,
            listen_port=args.port,
        )
    )
    web.run_app(sidecar.app(), host=args.host, port=args.port, print=None)
    return 0
