"""One scheduling profile: filters -> weighted scorers -> picker, with the framework's invariants.

The framework, not the plugins, enforces the rules of upstream ``SchedulerProfile.Run``:

* filters run in order and the chain stops as soon as one leaves nothing (the profile then has
  no result, and the reason is written to ``PROFILE_FAILURES`` for the handler's error message);
* every survivor starts at a total of 0; each scorer's value is clamped into [0, 1] (NaN counts
  as 0), multiplied by the scorer's weight and added; keys a scorer returns for endpoints that
  are not candidates are ignored;
* the picker gets the survivors with their totals.

Hot-path design (the cycle runs for every request, synchronously, over a frozen snapshot):
scorers return ``dict[name, score]`` so the framework accumulates with dict operations only;
totals live in one dict; the picker receives a :class:`ScoredView` that materialises
:class:`ScoredEndpoint` objects only if a third-party picker iterates it (the built-in pickers
read the endpoint tuple and the totals dict directly). Tracing is a separate code path selected
once per cycle, so a ``None`` trace costs nothing per plugin.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from time import perf_counter
from typing import overload

from kvroute.datastore.endpoint import Endpoint
from kvroute.scheduling.interfaces import (
    EMPTY_REASON,
    EXPLAIN,
    PROFILE_FAILURES,
    CycleState,
    Filter,
    Picker,
    PluginTrace,
    ProfileResult,
    ScoredEndpoint,
    Scorer,
)
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn
from kvroute.scheduling.timing import PluginTimings

# Up to this many names, a sparse result is placed by scanning the candidate names (C-level
# ``list.index``) rather than building a name -> slot index (measured at 100 candidates: ten
# scans cost about what building the index does).
FEW = 8


class ScoredView(Sequence[ScoredEndpoint]):
    """The picker's input: survivors in filter order plus their weighted totals.

    A ``Sequence[ScoredEndpoint]`` for any picker, built lazily; built-in pickers check
    ``type(scored) is ScoredView`` and read :attr:`endpoints` / :attr:`totals` directly, which
    avoids one object per endpoint per cycle. A view the profile builds also carries
    :attr:`column`, the totals as a list aligned with :attr:`endpoints` (names unique), and
    builds the :attr:`totals` dict only when something reads it.
    """

    __slots__ = ("_totals", "column", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint], totals: Mapping[str, float]) -> None:
        self.endpoints = endpoints
        self._totals: Mapping[str, float] | None = totals
        self.column: list[float] | None = None

    @classmethod
    def aligned(cls, endpoints: Sequence[Endpoint], column: list[float]) -> ScoredView:
        """``column[i]`` is the total of ``endpoints[i]``; their names must be unique."""
        view = cls.__new__(cls)
        view.endpoints = endpoints
        view._totals = None
        view.column = column
        return view

    @property
    def totals(self) -> Mapping[str, float]:
        """Name -> weighted total."""
        t = self._totals
        if t is None:
            col = self.column
            assert col is not None
            t = self._totals = dict(zip([e.name for e in self.endpoints], col, strict=True))
        return t

    def __len__(self) -> int:
        return len(self.endpoints)

    @overload
    def __getitem__(self, index: int) -> ScoredEndpoint: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ScoredEndpoint]: ...

    def __getitem__(self, index: int | slice) -> ScoredEndpoint | Sequence[ScoredEndpoint]:
        totals = self.totals
        if isinstance(index, slice):
            return [ScoredEndpoint(e, totals[e.name]) for e in self.endpoints[index]]
        e = self.endpoints[index]
        return ScoredEndpoint(e, totals[e.name])

    def __iter__(self) -> Iterator[ScoredEndpoint]:
        totals = self.totals
        for e in self.endpoints:
            yield ScoredEndpoint(e, totals[e.name])


def as_arrays(scored: Sequence[ScoredEndpoint]) -> tuple[Sequence[Endpoint], Mapping[str, float]]:
    """Endpoints and name->score for a picker, without copies when given a :class:`ScoredView`."""
    if type(scored) is ScoredView:
        return scored.endpoints, scored.totals
    return [s.endpoint for s in scored], {s.endpoint.name: s.score for s in scored}


def clamp01(value: float) -> float:
    """Clamp into [0, 1]; NaN becomes 0 (``not value >= 0`` is true for NaN)."""
    if not value >= 0.0:
        return 0.0
    if value > 1.0:
        return 1.0
    return value


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


class SchedulerProfile:
    """A named chain of plugins; :meth:`run` is one profile's part of a scheduling cycle."""

    __slots__ = (
        "_filters",
        "_picker",
        "_picker_buf",
        "_scorers",
        "filters",
        "name",
        "picker",
        "scorers",
    )

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[WeightedScorer],
        picker: Picker,
        timings: PluginTimings | None = None,
    ) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        # Pre-bind everything the hot loop touches: (plugin, timing buffer or None).
        self._filters: tuple[tuple[Filter, deque[float] | None], ...] = tuple(
            (f, _series(timings, "Filter", f)) for f in self.filters
        )
        self._scorers: tuple[tuple[Scorer, float, deque[float] | None], ...] = tuple(
            (ws.scorer, float(ws.weight), _series(timings, "Scorer", ws.scorer))
            for ws in self.scorers
        )
        self._picker = picker
        self._picker_buf = _series(timings, "Picker", picker)

    def run(
        self,
        state: CycleState,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        trace: list[PluginTrace] | None = None,
        totals_out: dict[str, float] | None = None,
    ) -> ProfileResult | None:
        """Run the chain; ``None`` when a filter left nothing (reason in ``PROFILE_FAILURES``).

        ``trace`` (dry runs only) receives one :class:`PluginTrace` per plugin that ran;
        ``totals_out`` receives the weighted totals.
        """
        if trace is not None:
            return self._run_traced(state, request, endpoints, trace, totals_out)
        eps = endpoints
        for f, buf in self._filters:
            if buf is None:
                eps = f.filter(state, request, eps)
            else:
                t0 = perf_counter()
                eps = f.filter(state, request, eps)
                buf.append(perf_counter() - t0)
            if not eps:
                self._fail(state, f)
                return None
        keys = [e.name for e in eps]
        if len(set(keys)) != len(keys):
            # Duplicate names (never in a pool, where names are unique): one total per name.
            view = ScoredView(eps, self._accumulate_dicts(state, request, eps))
        else:
            view = ScoredView.aligned(eps, self._accumulate_column(state, request, eps, keys))
        if totals_out is not None:
            totals_out.update(view.totals)
        buf = self._picker_buf
        if buf is None:
            return self._picker.pick(state, view)
        t0 = perf_counter()
        result = self._picker.pick(state, view)
        buf.append(perf_counter() - t0)
        return result

    def _accumulate_column(
        self,
        state: CycleState,
        request: InferenceRequest,
        eps: Sequence[Endpoint],
        keys: list[str],
    ) -> list[float]:
        """Every scorer's weighted, clamped scores summed per candidate, in candidate order.

        Every scorer runs first (none sees the totals); their results are then added in scorer
        order, each total receiving the same float additions in the same order as
        :func:`_accumulate` would give it, so totals are bit-identical. What that order allows:

        * while every total is still equal (no scorer has told the candidates apart yet), a
          uniform result is added once to that common value (``u``) instead of to each total;
        * a run of uniform results after that is added in one pass (:func:`_add_constants`);
        * a :class:`ScoreColumn` over ``eps`` is added position by position (without the clamp
          when it is ``unit``), a sparse one at its few positions only;
        * a dict with exactly the candidates' keys is read in candidate order with one C-level
          ``itemgetter`` call; anything else (sparse, extra keys) goes through a name -> position
          index (built at most once per cycle).
        """
        n = len(keys)
        results = [
            (_score(scorer, buf, state, request, eps), weight)
            for scorer, weight, buf in self._scorers
        ]
        u = 0.0  # every total, while acc is None
        acc: list[float] | None = None
        consts: list[float] = []  # uniform additions not yet applied to acc
        index: dict[str, int] | None = None
        for raw, weight in results:
            sparse: Mapping[str, float] | None = None
            if type(raw) is ScoreColumn and raw.endpoints is eps:
                col = raw.column
                if col is None:
                    if raw.only is not None:
                        # its zeros add nothing, unless the weight is not finite (0 * inf is NaN)
                        sparse = raw.only if 0.0 * weight == 0.0 else raw.as_dict()
                    else:
                        c = clamp01(raw.value) * weight
                        if c == 0.0:  # t + 0.0 is t: totals start at +0.0, so none is -0.0
                            continue
                        if acc is None:
                            u = u + c
                        else:
                            consts.append(c)
                        continue
                else:
                    if consts:
                        assert acc is not None
                        acc = _add_constants(acc, consts)
                        consts = []
                    acc = _add_values(acc, u, col, weight, raw.unit)
                    continue
            elif not raw:
                continue
            elif type(raw) is dict and len(raw) == n and n > 1:
                try:
                    vals = itemgetter(*keys)(raw)
                except KeyError:  # as many keys as candidates, but not the same ones
                    sparse = raw
                else:
                    if consts:
                        assert acc is not None
                        acc = _add_constants(acc, consts)
                        consts = []
                    acc = _add_values(acc, u, vals, weight, False)
                    continue
            else:
                sparse = raw
            if acc is None:
                acc = [u] * n
            elif consts:
                acc = _add_constants(acc, consts)
                consts = []
            if index is None and len(sparse) <= FEW:
                _accumulate_few(acc, keys, sparse, weight)
                continue
            if index is None:
                index = dict(zip(keys, range(n), strict=True))
            _accumulate_sparse(acc, index, sparse, weight)
        if acc is None:
            return [u] * n
        if consts:
            acc = _add_constants(acc, consts)
        return acc

    def _accumulate_dicts(
        self, state: CycleState, request: InferenceRequest, eps: Sequence[Endpoint]
    ) -> dict[str, float]:
        """The plain dict accumulation (used when candidate names repeat)."""
        totals = dict.fromkeys([e.name for e in eps], 0.0)
        for scorer, weight, buf in self._scorers:
            raw = _score(scorer, buf, state, request, eps)
            _accumulate(totals, raw, weight)
        return totals

    def _fail(self, state: CycleState, emptied_by: Filter) -> None:
        reason = f"filter {emptied_by.typed_name} left no endpoints"
        why = state.get(EMPTY_REASON, None)
        if why:
            reason = f"{reason} ({why})"
        failures = state.get(PROFILE_FAILURES, None)
        if failures is None:
            failures = {}
            state.write(PROFILE_FAILURES, failures)
        failures[self.name] = reason

    def _run_traced(
        self,
        state: CycleState,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        trace: list[PluginTrace],
        totals_out: dict[str, float] | None,
    ) -> ProfileResult | None:
        """The same algorithm as :meth:`run`, recording what every plugin saw and did."""
        eps = endpoints
        for f in self.filters:
            notes: list[str] = []
            state.write(EXPLAIN, notes)
            t0 = perf_counter()
            eps = f.filter(state, request, eps)
            dt = perf_counter() - t0
            trace.append(
                PluginTrace(
                    plugin=f.typed_name.name,
                    plugin_type=f.typed_name.type,
                    kind="filter",
                    survivors=[e.name for e in eps],
                    duration_us=dt * 1e6,
                    notes=notes or None,
                )
            )
            if not eps:
                self._fail(state, f)
                return None
        totals = dict.fromkeys([e.name for e in eps], 0.0)
        for scorer, weight, _buf in self._scorers:
            notes = []
            state.write(EXPLAIN, notes)
            t0 = perf_counter()
            raw = dict(scorer.score(state, request, eps))
            dt = perf_counter() - t0
            _accumulate(totals, raw, weight)
            trace.append(
                PluginTrace(
                    plugin=scorer.typed_name.name,
                    plugin_type=scorer.typed_name.type,
                    kind="scorer",
                    weight=weight,
                    raw_scores={k: v for k, v in raw.items() if k in totals},
                    scores={k: clamp01(v) for k, v in raw.items() if k in totals},
                    duration_us=dt * 1e6,
                    notes=notes or None,
                )
            )
        if totals_out is not None:
            totals_out.update(totals)
        notes = []
        state.write(EXPLAIN, notes)
        t0 = perf_counter()
        result = self.picker.pick(state, ScoredView(eps, totals))
        dt = perf_counter() - t0
        trace.append(
            PluginTrace(
                plugin=self.picker.typed_name.name,
                plugin_type=self.picker.typed_name.type,
                kind="picker",
                picked=[e.name for e in result.targets],
                duration_us=dt * 1e6,
                notes=notes or None,
            )
        )
        return result


def _score(
    scorer: Scorer,
    buf: deque[float] | None,
    state: CycleState,
    request: InferenceRequest,
    eps: Sequence[Endpoint],
) -> Mapping[str, float]:
    """One scorer's result, timed into ``buf`` when plugin timing is on."""
    if buf is None:
        return scorer.score(state, request, eps)
    t0 = perf_counter()
    raw = scorer.score(state, request, eps)
    buf.append(perf_counter() - t0)
    return raw


def _accumulate(totals: dict[str, float], raw: Mapping[str, float], weight: float) -> None:
    """``totals[k] += clamp01(raw[k]) * weight`` for candidate keys only.

    The clamp is inlined: measured at 1000 endpoints it beats both a call to :func:`clamp01`
    per value and a C-level min/max/sum pre-check that skips clamping for in-range scorers.
    ``not v >= 0`` is true for NaN, so NaN counts as 0.
    """
    for k, v in raw.items():
        if k in totals:
            if v >= 0.0:
                if v > 1.0:
                    v = 1.0
            else:
                v = 0.0
            totals[k] += v * weight


def _add_values(
    acc: list[float] | None, u: float, vals: Sequence[float], weight: float, unit: bool
) -> list[float]:
    """``acc[i] + clamp01(vals[i]) * weight`` (``u`` for every ``acc[i]`` when ``acc`` is None):
    the same float operations, in the same order, as :func:`_accumulate` on a dict (so totals
    are bit-identical), without its two dict lookups per candidate. ``v <= 1.0 and v >= 0.0`` is
    false for NaN, which :func:`clamp01` makes 0; ``unit`` values need no clamp.
    """
    if acc is None:
        if unit:
            return [u + v * weight for v in vals]
        return [u + (v if v <= 1.0 and v >= 0.0 else clamp01(v)) * weight for v in vals]
    if unit:
        return [t + v * weight for t, v in zip(acc, vals, strict=True)]
    return [
        t + (v if v <= 1.0 and v >= 0.0 else clamp01(v)) * weight
        for t, v in zip(acc, vals, strict=True)
    ]


def _add_constants(acc: list[float], consts: Sequence[float]) -> list[float]:
    """``acc[i] + consts[0] + consts[1] + ...``, added left to right (as one scorer after the
    other would), up to three per pass."""
    i, k = 0, len(consts)
    while i < k:
        if k - i >= 3:
            a, b, c = consts[i], consts[i + 1], consts[i + 2]
            acc = [t + a + b + c for t in acc]
            i += 3
        elif k - i == 2:
            a, b = consts[i], consts[i + 1]
            acc = [t + a + b for t in acc]
            i += 2
        else:
            a = consts[i]
            acc = [t + a for t in acc]
            i += 1
    return acc


def _accumulate_few(
    acc: list[float], keys: list[str], raw: Mapping[str, float], weight: float
) -> None:
    """:func:`_accumulate_sparse` for a handful of names, found by a C-level ``list.index``
    scan each instead of building the name -> slot index (a session's one endpoint, a prefix
    held on a few servers)."""
    for k, v in raw.items():
        try:
            i = keys.index(k)
        except ValueError:  # not a candidate
            continue
        if v >= 0.0:
            if v > 1.0:
                v = 1.0
        else:
            v = 0.0
        acc[i] += v * weight


def _accumulate_sparse(
    acc: list[float], index: Mapping[str, int], raw: Mapping[str, float], weight: float
) -> None:
    """:func:`_accumulate` into the candidate-ordered column ``acc`` (``index``: name -> slot)."""
    for k, v in raw.items():
        i = index.get(k)
        if i is not None:
            if v >= 0.0:
                if v > 1.0:
                    v = 1.0
            else:
                v = 0.0
            acc[i] += v * weight


def _series(
    timings: PluginTimings | None, extension_point: str, plugin: Filter | Scorer | Picker
) -> deque[float] | None:
    if timings is None:
        return None
    tn = plugin.typed_name
    return timings.series(extension_point, tn.type, tn.name)
