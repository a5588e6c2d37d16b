"""Scheduling extension points: tiny protocols that the framework runs, clamps, weights and times.

Plugins never enforce framework invariants themselves: ``SchedulerProfile`` clamps every score
into [0, 1], multiplies by the configured weight, stops the filter chain when nothing is left,
and records per-plugin latency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import Plugin
from kvroute.scheduling.request import InferenceRequest

T = TypeVar("T")


class StateKey(Generic[T]):
    """A typed key into :class:`CycleState` (aiohttp ``AppKey`` style)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class CycleState:
    """Per-cycle scratch space shared by the plugins of one scheduling cycle."""

    __slots__ = ("_data", "now")

    def __init__(self, now: float) -> None:
        self.now = now  # time.monotonic() at the start of the cycle; staleness is judged on it
        self._data: dict[StateKey[Any], Any] = {}

    def write(self, key: StateKey[T], value: T) -> None:
        self._data[key] = value

    def read(self, key: StateKey[T]) -> T:
        return self._data[key]  # type: ignore[no-any-return]

    def get(self, key: StateKey[T], default: T) -> T:
        return self._data.get(key, default)  # type: ignore[no-any-return]


class ScorerCategory(StrEnum):
    AFFINITY = "Affinity"
    DISTRIBUTION = "Distribution"
    BALANCE = "Balance"


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Endpoints in the picker's order: the first is the target, the rest are fallbacks."""

    targets: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    profile_results: Mapping[str, ProfileResult | None]
    primary_profile: str

    @property
    def primary(self) -> ProfileResult | None:
        return self.profile_results.get(self.primary_profile)


class Filter(Plugin, Protocol):
    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]: ...


class Scorer(Plugin, Protocol):
    """Return a score per endpoint name; the framework clamps into [0, 1] and weights."""

    @property
    def category(self) -> ScorerCategory: ...

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]: ...


class Picker(Plugin, Protocol):
    def pick(self, state: CycleState, scored: Sequence[ScoredEndpoint]) -> ProfileResult: ...


@dataclass(slots=True)
class PluginTrace:
    """What one plugin did in one cycle; only collected for dry runs (``kvroute schedule``)."""

    plugin: str
    kind: str  # "filter" | "scorer" | "picker"
    weight: float | None = None
    survivors: list[str] | None = None
    scores: dict[str, float] | None = None
    picked: list[str] | None = None
    duration_us: float = 0.0


@dataclass(slots=True)
class CycleTrace:
    profiles: dict[str, list[PluginTrace]] = field(default_factory=dict)
    totals: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
