"""``kvroute sim``: start N simulated vLLM-like servers on loopback ports in one process.

Prints one line per server when it is ready, e.g.
``sim-0 ready http://127.0.0.1:8000 model=meta-llama/Llama-3.1-8B-Instruct profile=tiny``,
then serves until SIGINT/SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from kvroute_sim.accelerators import ACCELERATORS
from kvroute_sim.cluster import SimCluster
from kvroute_sim.config import PROFILE_NAMES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=1, help="number of servers (default 1)")
    parser.add_argument(
        "--base-port", type=int, default=8000, help="server i listens on base+i (0 = ephemeral)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None)
    parser.add_argument("--config", default=None, help="YAML ServerConfig (see docs/simulator.md)")
    parser.add_argument("--model", default=None, help="base model name served")
    parser.add_argument(
        "--lora", action="append", default=None, help="a LoRA adapter name served (repeatable)"
    )
    parser.add_argument(
        "--metrics-flavour", choices=("vllm", "vllm-legacy", "sglang"), default=None
    )
    parser.add_argument(
        "--kv-events-base-port",
        type=int,
        default=None,
        help="publish KV events (ZMQ PUB) on tcp://HOST:<port+i> (off by default)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="HF tokenizer.json or its directory (default: the built-in word-piece tokenizer)",
    )
    parser.add_argument(
        "--accelerator",
        action="append",
        default=None,
        help="accelerator of the servers, cycled over them (repeatable; NAME or NAME:COUNT, "
        f"comma lists too; known: {', '.join(ACCELERATORS)}; default h100)",
    )
    parser.add_argument("--log-level", default="INFO")


async def _serve(args: argparse.Namespace) -> int:
    cluster = SimCluster(
        args.servers,
        profile=args.profile,
        base_port=args.base_port,
        host=args.host,
        config_file=args.config,
        model=args.model,
        loras=args.lora,
        kv_events_base_port=args.kv_events_base_port,
        metrics_flavour=args.metrics_flavour,
        tokenizer=args.tokenizer,
        accelerators=args.accelerator,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with cluster:
        for s, acc in zip(cluster.servers, cluster.accelerators, strict=True):
            extra = f" kv_events={s.kv_events_endpoint}" if s.kv_events_endpoint else ""
            print(
                f"{s.name} ready {s.url} model={s.config.model} profile={s.config.profile}"
                f"{f' accelerator={acc}' if args.accelerator else ''}{extra}",
                flush=True,
            )
        await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    return asyncio.run(_serve(args))
