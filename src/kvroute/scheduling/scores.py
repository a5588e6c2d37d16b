"""``ScoreColumn``: a scorer's result as values aligned with its candidate tuple.

A scorer returns ``Mapping[str, float]`` (endpoint name -> score). Building that as a dict costs
one hash insert per candidate, and the profile then pays one loop turn and two dict lookups per
candidate to add it to the totals. A built-in scorer that scores every candidate it was given
can instead return a :class:`ScoreColumn`: the candidate sequence it was called with plus a list
of values in the same order (``column``), or one value shared by every candidate
(:meth:`ScoreColumn.uniform`: an idle pool, a signal that is equal everywhere). When the column's
``endpoints`` is the profile's own candidate sequence (identity), the profile adds it
position by position with a list comprehension (a uniform column: one constant), with the same
float operations in the same order as the dict path, so totals and decisions are bit-identical.

Two refinements let the profile skip work it would otherwise do per candidate:

* ``unit=True`` promises that every value is already in [0, 1] (no NaN), so the profile adds
  ``value * weight`` without its clamp (``clamp01(v)`` is ``v`` there, so totals are unchanged);
  only a scorer that can prove it (``min_max_low_is_best`` over integers) sets it;
* :meth:`ScoreColumn.sparse`: 0.0 for every candidate except the few named (a prefix hit on some
  servers), so the profile adds only those (adding ``0.0 * weight`` is a no-op on a total).

Anything else reading the result sees an ordinary read-only mapping (the dict is built on first
access), equal to the dict the scorer used to return.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any

from kvroute.datastore.endpoint import Endpoint


class ScoreColumn(Mapping[str, float]):
    """Scores for ``endpoints`` in order: ``column[i]`` is ``endpoints[i]``'s score.

    ``column`` is ``None`` for a uniform column, whose every candidate scores ``value``, and for
    a sparse one (``only`` set), whose candidates score 0.0 except those ``only`` names.
    ``unit``: every value of ``column`` is in [0, 1] and none is NaN (the profile skips its clamp).
    """

    __slots__ = ("_map", "column", "endpoints", "only", "unit", "value")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        column: list[float] | None,
        value: float = 0.0,
        *,
        unit: bool = False,
    ) -> None:
        if column is not None and len(column) != len(endpoints):
            raise ValueError(f"ScoreColumn: {len(column)} values for {len(endpoints)} endpoints")
        self.endpoints = endpoints
        self.column = column
        self.value = value
        self.unit = unit
        self.only: Mapping[str, float] | None = None
        self._map: dict[str, float] | None = None

    @classmethod
    def uniform(cls, endpoints: Sequence[Endpoint], value: float) -> ScoreColumn:
        """Every candidate scores ``value``."""
        return cls(endpoints, None, value)

    @classmethod
    def sparse(cls, endpoints: Sequence[Endpoint], only: Mapping[str, float]) -> ScoreColumn:
        """Every candidate scores 0.0 except those named in ``only`` (names that are not
        candidates are ignored)."""
        col = cls(endpoints, None, 0.0)
        col.only = only
        return col

    def as_dict(self) -> dict[str, float]:
        """The equivalent ``{name: score}`` dict (built once; a later name wins, as in a dict)."""
        m = self._map
        if m is None:
            names = [e.name for e in self.endpoints]
            if self.column is not None:
                m = dict(zip(names, self.column, strict=True))
            else:
                m = dict.fromkeys(names, self.value)
                if self.only is not None:
                    for k, v in self.only.items():
                        if k in m:
                            m[k] = v
            self._map = m
        return m

    def __getitem__(self, key: str) -> float:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __bool__(self) -> bool:
        return len(self.endpoints) > 0

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def keys(self) -> KeysView[str]:
        return self.as_dict().keys()

    def items(self) -> ItemsView[str, float]:
        return self.as_dict().items()

    def values(self) -> ValuesView[float]:
        return self.as_dict().values()

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, ScoreColumn):
            other = other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ScoreColumn({self.as_dict()!r})"
