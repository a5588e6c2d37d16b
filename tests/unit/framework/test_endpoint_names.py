"""kvroute's per-rank endpoint names (``<pod>-rank-<i>``), formatted and split in one place."""

from __future__ import annotations

import pytest

from kvroute.framework.endpoint import rank_endpoint_name, split_rank_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vllm-0-rank-3", ("vllm-0", 3)),
        ("a-rank-1-rank-2", ("a-rank-1", 2)),
        ("pod-a", ("pod-a", None)),
        ("pod-a-rank-x", ("pod-a-rank-x", None)),
        ("pod-a-rank-", ("pod-a-rank-", None)),
        ("pod-a-rank-\u0663", ("pod-a-rank-\u0663", None)),  # a non-ASCII digit is not a rank
    ],
)
def test_split_rank_name(name: str, expected: tuple[str, int | None]) -> None:
    assert split_rank_name(name) == expected


def test_round_trip() -> None:
    assert split_rank_name(rank_endpoint_name("p", 7)) == ("p", 7)
