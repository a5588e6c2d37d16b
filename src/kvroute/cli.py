"""The ``kvroute`` command: one entry point, one module per subcommand, imported lazily.

Each subcommand module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Lazy imports keep ``kvroute --help`` fast and let a subcommand's heavy dependencies (grpc, Envoy,
matplotlib) load only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from kvroute import __version__

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "schedule": ("kvroute.commands.schedule", "run one scheduling cycle offline and explain it"),
    "sim": ("kvroute_sim.cli", "start N simulated vLLM-like model servers on loopback ports"),
    "epp": ("kvroute.commands.epp", "run the Endpoint Picker (Envoy ext_proc gRPC server)"),
    "serve": ("kvroute.commands.serve", "run the EPP and a real Envoy in front of named endpoints"),
    "demo": ("kvroute.commands.demo", "simulated pool + gateway + mixed workload vs round-robin"),
    "bench": ("kvroute_bench.cli", "benchmarks: virtual-time cluster, live load, micro"),
    "top": ("kvroute.commands.top", "watch a running EPP's pool live in the terminal"),
}


class _Subcommand(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _Subcommand:
    return cast(_Subcommand, importlib.import_module(SUBCOMMANDS[name][0]))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvroute",
        description="kvroute: an inference-aware gateway for LLM model-server pools.",
    )
    parser.add_argument("--version", action="version", version=f"kvroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported; the others just list their help line.
        if name == chosen:
            _load(name).configure(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    try:
        return _load(args.command).run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
