"""Compact "which servers hold this block" values for the block -> servers tables.

Almost every block is held by exactly one server (affinity routing is the point), and a Python
``set`` costs ~216 bytes even with one element, more than everything else a block costs. So a
table value is the server's name (``str``, shared with every other entry for that server) and
becomes a ``set`` only when a second server holds the same block. Measured effect in
``docs/benchmarks.md`` (bytes per cached block).
"""

from __future__ import annotations

from collections.abc import Iterable

Holders = str | set[str]


def add_holder(table: dict[int, Holders], key: int, server: str) -> None:
    current = table.get(key)
    if current is None:
        table[key] = server
    elif isinstance(current, str):
        if current != server:
            table[key] = {current, server}
    else:
        current.add(server)


def drop_holder(table: dict[int, Holders], key: int, server: str) -> None:
    current = table.get(key)
    if current is None:
        return
    if isinstance(current, str):
        if current == server:
            del table[key]
        return
    current.discard(server)
    if len(current) == 1:
        table[key] = next(iter(current))
    elif not current:
        del table[key]


def holds(value: Holders | None, server: str) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value == server
    return server in value


def holder_names(value: Holders | None) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return value
