"""The ``kvroute bench`` and ``kvroute demo`` subcommands, as the ``kvroute`` CLI discovers them.

``kvroute``'s CLI finds them through the ``kvroute.commands`` entry-point group (see
``pyproject.toml``), so the product never imports the benchmark. Each object here is cheap to
load: it names its help line and the module that implements it, imported only when the subcommand
runs, after checking that the ``[bench]`` extra (rich, matplotlib) is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Protocol, cast

# Third-party modules the bench and the demo need beyond the EPP's own dependencies.
BENCH_EXTRA_MODULES: tuple[str, ...] = ("rich", "matplotlib")


class _Implementation(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def missing_extra_modules() -> list[str]:
    return [m for m in BENCH_EXTRA_MODULES if importlib.util.find_spec(m) is None]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    name: str
    help: str
    module: str
    extras: str  # what to install, as pip spells it: "bench" or "bench,gateway"

    def _implementation(self) -> _Implementation:
        missing = missing_extra_modules()
        if missing:
            raise SystemExit(
                f"kvroute {self.name} needs the [bench] extra ({', '.join(missing)} not "
                f"installed): pip install 'kvroute[{self.extras}]'"
            )
        return cast(_Implementation, importlib.import_module(self.module))

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self._implementation().configure(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self._implementation().run(args)


BENCH = LazyCommand(
    name="bench",
    help="benchmarks: virtual-time cluster, live load, micro",
    module="kvroute_bench.cli",
    extras="bench",
)
# The demo's kvroute phase runs a real Envoy, hence [gateway] as well.
DEMO = LazyCommand(
    name="demo",
    help="simulated pool + gateway + mixed workload vs round-robin",
    module="kvroute_bench.demo.command",
    extras="bench,gateway",
)
