"""The ``kvroute`` command: one entry point, one module per subcommand, imported lazily.

Each subcommand module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Lazy imports keep ``kvroute --help`` fast and let a subcommand's heavy dependencies (grpc, Envoy,
matplotlib) load only when that subcommand runs.

Subcommands that other packages provide (``kvroute bench`` and ``kvroute demo``, from the
benchmark) are found through the ``kvroute.commands`` entry-point group: each entry point names an
object with a ``help`` line, ``configure`` and ``run``. kvroute itself never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, cast

from kvroute import __version__

ENTRY_POINT_GROUP = "kvroute.commands"

# name -> (module, one-line help): the subcommands kvroute itself ships.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "schedule": ("kvroute.commands.schedule", "run one scheduling cycle offline and explain it"),
    "sim": ("kvroute_sim.cli", "start N simulated vLLM-like model servers on loopback ports"),
    "epp": ("kvroute.commands.epp", "run the Endpoint Picker (Envoy ext_proc gRPC server)"),
    "serve": ("kvroute.commands.serve", "run the EPP and a real Envoy in front of named endpoints"),
    "top": ("kvroute.commands.top", "watch a running EPP's pool live in the terminal"),
    "sidecar": ("kvroute.commands.sidecar", "run the P/D routing sidecar beside a decode server"),
}


class Subcommand(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


class PluggedSubcommand(Subcommand, Protocol):
    """What a ``kvroute.commands`` entry point loads to."""

    @property
    def help(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Builtin:
    module: str
    help: str

    def _load(self) -> Subcommand:
        return cast(Subcommand, importlib.import_module(self.module))

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self._load().configure(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self._load().run(args)


@dataclass(slots=True)
class _Plugged:
    """An entry point of the ``kvroute.commands`` group, loaded the first time it is used."""

    entry_point: EntryPoint
    _loaded: PluggedSubcommand | None = None

    def _load(self) -> PluggedSubcommand:
        if self._loaded is None:
            self._loaded = cast(PluggedSubcommand, self.entry_point.load())
        return self._loaded

    @property
    def help(self) -> str:
        return self._load().help

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self._load().configure(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self._load().run(args)


def subcommands() -> Mapping[str, PluggedSubcommand]:
    """Every subcommand: the built-ins, then those installed packages register (by name).

    Nothing is imported here; a plugged subcommand's object loads when its help line is shown
    or it runs, so ``kvroute epp`` never loads the benchmark's code.
    """
    found: dict[str, PluggedSubcommand] = {
        name: _Builtin(module, help_text) for name, (module, help_text) in SUBCOMMANDS.items()
    }
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name not in found:  # a plug-in cannot shadow a built-in
            found[ep.name] = _Plugged(ep)
    return found


def build_parser(
    argv: Sequence[str], commands: Mapping[str, PluggedSubcommand] | None = None
) -> argparse.ArgumentParser:
    commands = subcommands() if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="kvroute",
        description="kvroute: an inference-aware gateway for LLM model-server pools.",
    )
    parser.add_argument("--version", action="version", version=f"kvroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    # Help lines are shown only by ``kvroute --help`` (or a wrong command): otherwise only the
    # chosen subcommand's object is loaded.
    listing = chosen is None or chosen not in commands
    for name, command in commands.items():
        help_text = command.help if listing or name == chosen else None
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported; the others just list their help line.
        if name == chosen:
            command.configure(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    commands = subcommands()
    parser = build_parser(args_list, commands)
    args = parser.parse_args(args_list)
    try:
        return commands[args.command].run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
