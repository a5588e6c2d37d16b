"""Client model name -> target model, criticality and priority, once per request.

Everything expensive happens in the constructor, which folds a :class:`ResourceSet` into dicts;
:meth:`ModelResolver.resolve` is a few dict lookups and at most one random draw.

Target model, in order (the first that applies wins):

1. the ``x-llm-d-model-name-rewrite`` header (alias ``x-gateway-model-name-rewrite``; set by
   the gateway's route) overrides everything. Upstream applies a matching InferenceModelRewrite
   *after* the header, so there a rewrite beats the header; kvroute lets the explicit per-route
   header win;
2. an InferenceModel whose ``modelName`` is the requested model and which has
   ``targetModels``: a weighted draw (no weights: uniform), as upstream v0.5.1;
3. an InferenceModelRewrite rule. Precedence across all rules, as upstream's
   ``modelrewritestore.go``: an Exact match beats a generic rule (no ``matches``); among
   equals, the oldest ``creationTimestamp`` wins (objects without one count as newer than any
   dated one, and ties keep load order); within one object, the first rule in list order
   wins. The target is a weighted draw (``randrange(total)`` walk; total 0 -> uniform);
4. otherwise the requested name itself.

Priority and criticality. Upstream has two generations: the legacy InferenceModel
``criticality`` and the newer InferenceObjective ``priority`` (negative = sheddable). kvroute
carries both and maps them with :meth:`Criticality.to_priority` /
:meth:`Criticality.from_priority`: ``Critical`` <-> 1 (any priority > 0 is critical),
``Standard`` <-> 0, ``Sheddable`` <-> -1 (any priority < 0 is sheddable). In order:

1. ``x-llm-d-inference-objective`` (alias ``x-gateway-inference-objective``) naming a known
   InferenceObjective: its ``priority`` (unset: 0), criticality derived from it;
2. an InferenceModel for the requested model: its ``criticality`` (unset: Standard);
3. an unknown model (no InferenceModel and no rewrite rule matched and no rewrite header),
   per ``unknown_model``: ``passthrough`` (default, as upstream v1.x: the model goes through
   with ``default_criticality``), ``sheddable`` (upstream v0.5.1 synthesised a Sheddable
   InferenceModel) or ``reject`` (404 ``ModelNotFoundError``, as upstream v0.2);
4. a known model without an InferenceModel (rewrite only): ``default_criticality``.

An objective header that names no InferenceObjective is ignored (upstream: priority 0 unless
the model says otherwise).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import accumulate

from kvroute.api import InferenceModel, InferenceModelRewrite
from kvroute.config.resources import ResourceSet
from kvroute.errors import ModelNotFoundError
from kvroute.requestcontrol.headers import MODEL_REWRITE, OBJECTIVE, read_aliased
from kvroute.scheduling.request import Criticality

__all__ = [
    "MODEL_REWRITE_HEADER",
    "OBJECTIVE_HEADER",
    "ModelResolver",
    "ResolvedModel",
    "UnknownModelPolicy",
    "WeightedChoice",
]

# The current names; the legacy x-gateway-* aliases are read too (kvroute.requestcontrol.headers).
MODEL_REWRITE_HEADER = MODEL_REWRITE.name
OBJECTIVE_HEADER = OBJECTIVE.name


class UnknownModelPolicy(StrEnum):
    PASSTHROUGH = "passthrough"
    SHEDDABLE = "sheddable"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """The outcome of model resolution for one request.

    ``incoming_model`` is what the client asked for (and what the response's ``model`` is
    rewritten back to); ``target_model`` is what the model server gets. ``objective_name``,
    ``rewrite_name`` and ``inference_model_name`` say which object decided (None: none did).
    """

    incoming_model: str
    target_model: str
    criticality: Criticality
    priority: int
    objective_name: str | None = None
    rewrite_name: str | None = None
    inference_model_name: str | None = None

    @property
    def rewritten(self) -> bool:
        return self.target_model != self.incoming_model


class WeightedChoice:
    """A fixed weighted split: ``pick`` is one ``randrange`` and one ``bisect``.

    All weights None or a total of 0 mean uniform, as upstream. A single name needs no draw.
    """

    __slots__ = ("_cumulative", "_names", "_total")

    def __init__(self, names: Sequence[str], weights: Sequence[int | None]) -> None:
        if not names:
            raise ValueError("a weighted choice needs at least one name")
        self._names = tuple(names)
        concrete = [w or 0 for w in weights]
        self._total = sum(concrete)
        self._cumulative = tuple(accumulate(concrete)) if self._total else ()

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def weights(self) -> tuple[int, ...]:
        """Each name's weight; all 0 means uniform."""
        if not self._total:
            return (0,) * len(self._names)
        return tuple(b - a for a, b in zip((0, *self._cumulative), self._cumulative, strict=False))

    def pick(self, rng: random.Random) -> str:
        names = self._names
        if len(names) == 1:
            return names[0]
        if not self._total:
            return names[rng.randrange(len(names))]
        return names[bisect_right(self._cumulative, rng.randrange(self._total))]


@dataclass(frozen=True, slots=True)
class _ModelEntry:
    name: str
    criticality: Criticality
    targets: WeightedChoice | None


@dataclass(frozen=True, slots=True)
class _RewriteEntry:
    name: str
    targets: WeightedChoice


_NEVER = datetime.max.replace(tzinfo=UTC)


def _age_key(created: datetime | None) -> datetime:
    if created is None:
        return _NEVER
    return created if created.tzinfo else created.replace(tzinfo=UTC)


class ModelResolver:
    """Resolves request model names against one pool's InferenceModels / Rewrites / Objectives.

    Pass a :class:`ResourceSet` already narrowed to the EPP's pool (``ResourceSet.for_pool``).
    ``rng`` defaults to a fresh ``random.Random()``; tests pass a seeded one.
    """

    __slots__ = (
        "_default_criticality",
        "_default_priority",
        "_exact",
        "_generic",
        "_models",
        "_objectives",
        "_rng",
        "_unknown",
    )

    def __init__(
        self,
        resources: ResourceSet,
        rng: random.Random | None = None,
        default_criticality: Criticality = Criticality.STANDARD,
        unknown_model: UnknownModelPolicy | str = UnknownModelPolicy.PASSTHROUGH,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._default_criticality = default_criticality
        self._default_priority = default_criticality.to_priority()
        self._unknown = UnknownModelPolicy(unknown_model)
        self._models = _index_models(resources.models)
        self._exact, self._generic = _index_rewrites(resources.rewrites)
        self._objectives: dict[str, int] = {
            o.metadata.name: (o.spec.priority or 0) for o in resources.objectives
        }

    def resolve(self, model: str, headers: Mapping[str, str]) -> ResolvedModel:
        """Resolve ``model`` (the body's ``model``); ``headers`` must have lowercase keys.

        Raises :class:`ModelNotFoundError` (404) only under ``unknown_model="reject"``.
        """
        rng = self._rng
        target = model
        rewrite_name: str | None = None
        entry = self._models.get(model)
        if entry is not None and entry.targets is not None:
            target = entry.targets.pick(rng)
        else:
            rule = self._exact.get(model) or self._generic
            if rule is not None:
                target = rule.targets.pick(rng)
                rewrite_name = rule.name
        header_target = read_aliased(headers, MODEL_REWRITE)
        if header_target:
            target = header_target
        known = entry is not None or rewrite_name is not None or bool(header_target)
        if not known and self._unknown is UnknownModelPolicy.REJECT:
            raise ModelNotFoundError(f"model {model!r} is not served by this pool")

        objective_name = read_aliased(headers, OBJECTIVE)
        priority = self._objectives.get(objective_name) if objective_name else None
        if priority is not None:
            return ResolvedModel(
                incoming_model=model,
                target_model=target,
                criticality=Criticality.from_priority(priority),
                priority=priority,
                objective_name=objective_name,
                rewrite_name=rewrite_name,
                inference_model_name=entry.name if entry else None,
            )
        if entry is not None:
            criticality = entry.criticality
        elif not known and self._unknown is UnknownModelPolicy.SHEDDABLE:
            criticality = Criticality.SHEDDABLE
        else:
            criticality = self._default_criticality
        return ResolvedModel(
            incoming_model=model,
            target_model=target,
            criticality=criticality,
            priority=criticality.to_priority(),
            rewrite_name=rewrite_name,
            inference_model_name=entry.name if entry else None,
        )

    def static_rewrites(
        self,
    ) -> tuple[dict[str, tuple[tuple[str, int], ...]], tuple[tuple[str, int], ...]]:
        """The body-model rewrites as data: ``({model: ((target, weight), ...)}, generic)``.

        What :meth:`resolve` does without headers, for a fallback outside the EPP (the FailOpen
        rewrite filter of ``kvroute.gateway.failopen``): an InferenceModel's targets first, then
        an exact InferenceModelRewrite; ``generic`` (empty: none) applies to any other model.
        """
        table: dict[str, tuple[tuple[str, int], ...]] = {}
        for name, rule in self._exact.items():
            table[name] = tuple(zip(rule.targets.names, rule.targets.weights, strict=True))
        for name, entry in self._models.items():
            if entry.targets is not None:
                table[name] = tuple(zip(entry.targets.names, entry.targets.weights, strict=True))
        generic = self._generic
        rest = (
            ()
            if generic is None
            else tuple(zip(generic.targets.names, generic.targets.weights, strict=True))
        )
        return table, rest


def _index_models(models: Iterable[InferenceModel]) -> dict[str, _ModelEntry]:
    """modelName -> entry; on a clash the oldest object wins (upstream's rule in a cluster)."""
    index: dict[str, _ModelEntry] = {}
    for m in sorted(models, key=lambda m: _age_key(m.metadata.creation_timestamp)):
        spec = m.spec
        targets = None
        if spec.target_models:
            targets = WeightedChoice(
                [t.name for t in spec.target_models], [t.weight for t in spec.target_models]
            )
        index.setdefault(
            spec.model_name,
            _ModelEntry(
                name=m.metadata.name,
                criticality=Criticality(spec.criticality or "Standard"),
                targets=targets,
            ),
        )
    return index


def _index_rewrites(
    rewrites: Iterable[InferenceModelRewrite],
) -> tuple[dict[str, _RewriteEntry], _RewriteEntry | None]:
    """Exact-match dict and the single winning generic rule, by upstream's precedence."""
    exact: dict[str, _RewriteEntry] = {}
    generic: _RewriteEntry | None = None
    for rw in sorted(rewrites, key=lambda r: _age_key(r.metadata.creation_timestamp)):
        for rule in rw.spec.rules:
            entry = _RewriteEntry(
                name=rw.metadata.name,
                targets=WeightedChoice(
                    [t.model_rewrite for t in rule.targets], [t.weight for t in rule.targets]
                ),
            )
            if rule.is_generic:
                generic = generic or entry
            for match in rule.matches:
                exact.setdefault(match.model.value, entry)
    return exact, generic
