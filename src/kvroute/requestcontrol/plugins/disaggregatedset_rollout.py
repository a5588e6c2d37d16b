"""``disaggregatedset-rollout-screener``: keep P and D of one request on one rollout revision.

Upstream ``requestcontrol/screener/disaggregatedsetrollout`` (Alpha). During a
``DisaggregatedSet`` rollout the prefill and decode pods of two revisions serve side by side;
a prefill pod of one revision must never hand its KV cache to a decode pod of another. The
screener runs once per request, before every profile (:class:`~kvroute.framework.hooks.
Screener`), so no filter, scorer or picker can undo it:

1. **Revision gating** (``revisionGating.mode`` ``sum`` or ``max-role``): a revision is
   *covered* when every role in ``requireRoles.values`` has a Ready pod; uncovered revisions
   are dropped. Unless a ``strict`` header selector pins the revision, one covered revision is
   drawn at random by weight and only its endpoints go on. ``sum``: weight = the revision's
   Ready pods over the required roles. ``max-role``: the role with the most Ready pods over all
   covered revisions (ties: the first in ``requireRoles.values``) is the dominant one, and a
   revision's weight is its count of that role. ``disabled``: no coverage check, no draw.
2. **Strict header selectors**: for each ``headerSelectors`` entry with ``mode: strict`` whose
   request header ``headerName`` is set, only the endpoints whose label ``labelKey`` equals the
   header value remain. No match fails closed.

An empty result is the director's 503 ``rejected-no-endpoints``; the screener never silently
crosses revisions. Until the plugin is attached (and while no pod is counted) gating fails
closed, as upstream does before its first pod snapshot.

Where the counts come from (kvroute): upstream watches core/v1 Pods matching
``scope.labelSelector``. kvroute's datastore already holds the pool's Ready, non-terminating
pods, so the screener is :class:`~kvroute.plugins.lifecycle.DatastoreAttachable` and counts
the datastore's endpoints whose labels match ``scope.labelSelector`` and carry both the
revision label (``revisionGating.revisionLabelKey``, default
``disaggregatedset.x-k8s.io/revision``) and the role label (``roleLabelKey``, default
``disaggregatedset.x-k8s.io/role``); a pod's data-parallel rank endpoints
(``<pod>-rank-<i>``) count as one pod. Pods outside the InferencePool are therefore not
counted (upstream would count them).

Not done here: upstream also stamps each selector's ``headerName`` response header from the
serving endpoint's ``labelKey`` (its ``ResponseHeaderProcessor`` side, for a coordinator to
copy into the next request). kvroute has no plugin seam for response headers, so nothing is
stamped and a ``prefer`` selector has no effect (a warning says so at load); its soft
preference is the separate ``header-label-affinity-scorer``, which works. Upstream's two
Prometheus series are kept as plain counters (:attr:`DisaggregatedSetRolloutScreener.
strict_no_match`, :meth:`~DisaggregatedSetRolloutScreener.shares`), not exported.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvroute.api.labels import Selector, parse_selector
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore, EndpointEvent
from kvroute.framework.endpoint import split_rank_name
from kvroute.framework.hooks import Screener
from kvroute.framework.request import InferenceRequest
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng

log = logging.getLogger(__name__)

TYPE = "disaggregatedset-rollout-screener"
DEFAULT_REVISION_LABEL = "disaggregatedset.x-k8s.io/revision"
DEFAULT_ROLE_LABEL = "disaggregatedset.x-k8s.io/role"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Strict):
    label_selector: str = Field(alias="labelSelector", min_length=1)

    @field_validator("label_selector")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_selector(value)  # a ValueError names the bad term
        return value


class HeaderSelector(_Strict):
    name: str = Field(min_length=1)
    header_name: str = Field(alias="headerName", min_length=1)
    label_key: str = Field(alias="labelKey", min_length=1)
    mode: Literal["strict", "prefer"]

    @field_validator("header_name")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()  # request headers reach plugins lowercased


class RequireRoles(_Strict):
    values: list[str]


class RevisionGating(_Strict):
    mode: Literal["sum", "max-role", "disabled"]
    require_roles: RequireRoles | None = Field(None, alias="requireRoles")
    revision_label_key: str = Field(DEFAULT_REVISION_LABEL, alias="revisionLabelKey")
    role_label_key: str = Field(DEFAULT_ROLE_LABEL, alias="roleLabelKey")

    @model_validator(mode="after")
    def _roles(self) -> RevisionGating:
        if self.mode == "disabled":
            return self
        if self.require_roles is None:
            raise ValueError(f"requireRoles is required when mode is {self.mode}")
        roles = self.require_roles.values
        if not roles:
            raise ValueError("requireRoles.values must contain at least one role")
        for i, role in enumerate(roles):
            if not role:
                raise ValueError(f"requireRoles.values[{i}] must not be empty")
            if role in roles[:i]:
                raise ValueError(f"requireRoles.values contains duplicate role {role!r}")
        return self

    @property
    def active(self) -> bool:
        return self.mode != "disabled"

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.require_roles.values) if self.require_roles else ()


class RolloutParams(_Strict):
    scope: Scope
    header_selectors: list[HeaderSelector] = Field(default_factory=list, alias="headerSelectors")
    revision_gating: RevisionGating = Field(alias="revisionGating")

    @model_validator(mode="after")
    def _unique(self) -> RolloutParams:
        names: set[str] = set()
        headers: set[str] = set()
        for sel in self.header_selectors:
            if sel.name in names:
                raise ValueError(f"headerSelectors: duplicate name {sel.name!r}")
            if sel.header_name in headers:
                raise ValueError(f"headerSelectors: duplicate headerName {sel.header_name!r}")
            names.add(sel.name)
            headers.add(sel.header_name)
        return self


def revision_shares(
    counts: Mapping[str, Mapping[str, int]], roles: Sequence[str], mode: str
) -> dict[str, float]:
    """Each covered revision's share of traffic (0..1); uncovered revisions are absent.

    ``counts`` is revision -> role -> Ready pods; ``mode`` ``sum`` or ``max-role``.
    """
    covered = {rev: per for rev, per in counts.items() if all(per.get(r, 0) > 0 for r in roles)}
    if mode == "max-role":
        dominant, best = "", -1
        for role in roles:  # requireRoles order breaks ties
            total = sum(per.get(role, 0) for per in covered.values())
            if total > best:
                dominant, best = role, total
        weights = {rev: per.get(dominant, 0) for rev, per in covered.items()}
    else:
        weights = {rev: sum(per.get(r, 0) for r in roles) for rev, per in covered.items()}
    total = sum(weights.values())
    if total <= 0:
        return {}
    return {rev: w / total for rev, w in weights.items() if w > 0}


def pick_revision(shares: Mapping[str, float], draw: float) -> str:
    """The revision ``draw`` (uniform in [0, 1)) lands on, revisions in sorted order."""
    revisions = sorted(shares)
    total = sum(shares.values())
    if not revisions or total <= 0:
        return ""
    x = draw * total
    cumulative = 0.0
    for rev in revisions:
        cumulative += shares[rev]
        if x < cumulative:
            return rev
    return revisions[-1]


class DisaggregatedSetRolloutScreener:
    """Revision gating plus strict header selectors, before any scheduling profile."""

    def __init__(
        self,
        name: str,
        params: RolloutParams,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params
        self.scope: Selector = parse_selector(params.scope.label_selector)
        gating = params.revision_gating
        self.gating = gating
        self.revision_label = gating.revision_label_key
        self.role_label = gating.role_label_key
        self.strict = tuple(s for s in params.header_selectors if s.mode == "strict")
        self._draw: Callable[[], float] = (rng or random.Random()).random
        self._datastore: Datastore | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._counts: dict[str, dict[str, int]] = {}
        self._shares: dict[str, float] = {}
        # strict selector name -> requests it failed closed (upstream's
        # ..._disaggregatedset_strict_header_no_match_total)
        self.strict_no_match: Counter[str] = Counter()

    # -- pod counts (from the datastore) -------------------------------------------------------

    def attach(self, datastore: Datastore) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._datastore = datastore
        self._unsubscribe = datastore.subscribe(self.endpoint_event)
        self._rebuild()

    def endpoint_event(self, event: EndpointEvent) -> None:
        self._rebuild()

    def _rebuild(self) -> None:
        if self._datastore is None or not self.gating.active:
            return
        pods: dict[str, tuple[str, str]] = {}
        for e in self._datastore.endpoints():
            revision = e.labels.get(self.revision_label, "")
            role = e.labels.get(self.role_label, "")
            if revision and role and self.scope.matches(e.labels):
                pods[split_rank_name(e.name)[0]] = (revision, role)
        counts: dict[str, dict[str, int]] = {}
        for revision, role in pods.values():
            per = counts.setdefault(revision, {})
            per[role] = per.get(role, 0) + 1
        self._counts = counts
        self._shares = revision_shares(counts, self.gating.roles, self.gating.mode)

    def counts(self) -> Mapping[str, Mapping[str, int]]:
        """revision -> role -> Ready pods in scope, as last counted."""
        return {rev: dict(per) for rev, per in self._counts.items()}

    def shares(self) -> Mapping[str, float]:
        """Each counted revision's current share (0 for an uncovered one): upstream's
        ``..._disaggregatedset_revision_gating_share`` gauge."""
        return {rev: self._shares.get(rev, 0.0) for rev in self._counts}

    # -- Screener --------------------------------------------------------------------------

    def screen(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        current: Sequence[Endpoint] = endpoints
        if self.gating.active:
            seen = {e.labels.get(self.revision_label, "") for e in current} - {""}
            shares = {rev: self._shares[rev] for rev in seen if self._shares.get(rev, 0.0) > 0}
            chosen = "" if self._has_strict_header(request) else pick_revision(shares, self._draw())
            current = [
                e
                for e in current
                if e.labels.get(self.revision_label, "") in shares
                and (not chosen or e.labels.get(self.revision_label) == chosen)
            ]
            if not current:
                return []
        return self._screen_strict(request, current)

    def _has_strict_header(self, request: InferenceRequest) -> bool:
        return any(request.headers.get(s.header_name) for s in self.strict)

    def _screen_strict(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        current = endpoints
        for sel in self.strict:
            wanted = request.headers.get(sel.header_name, "")
            if not wanted or not current:
                continue
            current = [e for e in current if e.labels.get(sel.label_key) == wanted]
            if not current:
                self.strict_no_match[sel.name] += 1
                return []
        return current


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    params = validate_parameters(RolloutParams, name, TYPE, parameters)
    prefer = [s.name for s in params.header_selectors if s.mode == "prefer"]
    if params.header_selectors:
        log.warning(
            "plugin %r (%s): kvroute does not stamp response headers, so headerSelectors%s are "
            "not stamped on responses (use header-label-affinity-scorer for the soft preference)",
            name,
            TYPE,
            f" (prefer-mode {', '.join(prefer)}: no effect)" if prefer else "",
        )
    return DisaggregatedSetRolloutScreener(name, params, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Screener] = DisaggregatedSetRolloutScreener
