"""`kvroute demo` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    print("kvroute demo: not implemented yet")
    return 2
