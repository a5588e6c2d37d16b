"""``kvroute serve --epp-replicas``: the EPP flags a serve command line hands to each replica."""

from __future__ import annotations

import argparse

from kvroute.commands.serve import configure, epp_child_args


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


def test_only_changed_epp_flags_are_passed_and_per_replica_ones_are_left_out() -> None:
    args = _args(
        [
            "--epp-replicas", "3", "--endpoint", "http://127.0.0.1:8001",
            "--endpoint", "http://127.0.0.1:8002", "--grpc-port", "9999",
            "--drain-timeout", "5s", "--enable-decision-header",
        ]
    )  # fmt: skip
    out = epp_child_args(args)
    assert sorted(out) == [
        "--drain-timeout=5.0",
        "--enable-decision-header=true",
        "--endpoint=http://127.0.0.1:8001",
        "--endpoint=http://127.0.0.1:8002",
    ]
    assert args.epp_replicas == 3
    assert epp_child_args(_args([])) == []


def test_transport_defaults_to_auto() -> None:
    """``serve`` with no flag lets the gateway pick lua where it can run (issue 19)."""
    assert _args([]).transport == "auto"
    assert _args(["--transport", "ext_proc"]).transport == "ext_proc"
