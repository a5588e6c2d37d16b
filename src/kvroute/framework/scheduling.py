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

from kvroute.framework.endpoint import Endpoint
from kvroute.framework.request import InferenceRequest
from kvroute.plugins.base import Plugin

T = TypeVar("T")
D = TypeVar("D")


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

    def get(self, key: StateKey[T], default: D) -> T | D:
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


class ProfileRunner(Protocol):
    """What a profile handler sees of a profile: its name (the framework runs it)."""

    @property
    def name(self) -> str: ...


class ProfileHandler(Plugin, Protocol):
    """Chooses which profiles run (possibly over several rounds) and which result is primary.

    ``pick`` is called until it returns an empty mapping; ``results`` holds what each profile run
    so far produced (``None`` when a profile found no endpoint). ``check_profiles`` runs once when
    the config loads, so a handler can reject a profile set it cannot drive.
    """

    def check_profiles(self, names: Sequence[str]) -> None: ...

    def pick(
        self,
        state: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, ProfileRunner],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]: ...

    def process_results(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult: ...


class SaturationDetector(Plugin, Protocol):
    """Pool saturation for admission: >= 1.0 means saturated (sheddable requests get 429)."""

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float: ...


# Present in the CycleState only while a dry run traces the cycle. A plugin that can explain
# itself appends human-readable notes to it (``state.get(EXPLAIN, None)``); on the hot path the
# key is absent and the plugin skips the work.
EXPLAIN: StateKey[list[str]] = StateKey("explain")

# Results of plugins' ``prefetch(request)`` (CPU-heavy work such as tokenisation, which the
# director runs in a worker thread before scheduling), by plugin name. Absent on the dry-run path.
PREFETCHED: StateKey[dict[str, object]] = StateKey("prefetched")

# A filter that returns no endpoints on purpose may say why (e.g. the decision tree dropping a
# sheddable request); the framework appends it to the profile's failure reason.
EMPTY_REASON: StateKey[str] = StateKey("empty-reason")


@dataclass(frozen=True, slots=True)
class PrefixCacheMatchInfo:
    """How much of this request's prompt each endpoint already caches (upstream
    ``PrefixCacheMatchInfo``), published into the CycleState by a prefix-cache producer.

    ``cached_tokens`` maps an endpoint name to the prompt tokens its cached prefix blocks cover
    (blocks x that endpoint's block size); an endpoint absent from it caches nothing. P/D
    deciders read it for the decode pick.
    """

    cached_tokens: Mapping[str, int]


PREFIX_CACHE_MATCH: StateKey[PrefixCacheMatchInfo] = StateKey("prefix-cache-match-info")

# Why a profile produced no result (written by the framework; read by profile handlers).
PROFILE_FAILURES: StateKey[dict[str, str]] = StateKey("profile-failures")


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
    raw_scores: dict[str, float] | None = None  # scorer output before clamping
    notes: list[str] | None = None  # what the plugin said about itself (see EXPLAIN)
    plugin_type: str = ""


@dataclass(slots=True)
class CycleTrace:
    profiles: dict[str, list[PluginTrace]] = field(default_factory=dict)
    totals: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
