"""``disagg-profile-handler``: prefill/decode (and encode) disaggregation, plus its PreRequest.

Upstream semantics (``profilehandler/disagg/disagg_profile_handler.go``):

* ``stageOrder: decode-first`` (default): run the decode profile (no result fails the request
  with 429); then the encode profile if its decider approves; then, with the decode pick
  published as :data:`PEER_ENDPOINT`, the prefill profile if its decider approves.
* ``prefill-first``: prefill always runs, then encode (decider), then decode with the prefill
  pick as the peer. A prefill decider with ``prefill-first`` is a config error.
* Decode is the primary profile either way: Envoy routes to the decode endpoint. A stage with no
  decider configured is off. A stage whose profile finds nothing is skipped (decode-only).
* PreRequest writes ``x-prefiller-host-port`` (the first prefill target, ``ip:port``) and
  ``x-encoder-hosts-ports`` (every encode target) into :data:`UPSTREAM_HEADERS`; a prefill pick
  equal to the decode pick writes nothing (that server prefills locally).

Parameters: ``profiles{decode,prefill,encode}``, ``deciders{prefill,encode}`` (plugin names,
declared anywhere in the config: they are resolved once every plugin is built), ``stageOrder``,
and the legacy flat keys ``decodeProfile``/``prefillProfile``/``encodeProfile``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvroute.errors import ConfigError, PluginValidationError, PoolExhaustedError
from kvroute.framework.endpoint import Endpoint
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    PROFILE_FAILURES,
    CycleState,
    ProfileHandler,
    ProfileResult,
    ProfileRunner,
    SchedulingResult,
    StateKey,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "disagg-profile-handler"
PREFILLER_HEADER = "x-prefiller-host-port"
ENCODERS_HEADER = "x-encoder-hosts-ports"

# The endpoint the other stage picked (upstream's ``peer-endpoint`` attribute).
PEER_ENDPOINT: StateKey[Endpoint] = StateKey("peer-endpoint")
# Which stages ran for this request, for deciders that learn from outcomes.
STAGES_RUN: StateKey[frozenset[str]] = StateKey("disagg-stages")

# Values of upstream's ``llm_d_epp_disagg_decision_total{decision_type}``.
DECISION_TYPES = ("decode-only", "prefill-decode", "encode-decode", "encode-prefill-decode")


@runtime_checkable
class Decider(Plugin, Protocol):
    """Whether a request runs an optional stage; ``decode`` is the decode pick (None under
    ``prefill-first``, where the decider is not consulted for prefill)."""

    def disaggregate(
        self, state: CycleState, request: InferenceRequest, decode: Endpoint | None
    ) -> bool: ...


class _Names(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    decode: str = "decode"
    prefill: str = "prefill"
    encode: str = "encode"


class _Deciders(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prefill: str | None = None
    encode: str | None = None


class DisaggParams(PluginParams):
    stage_order: Literal["decode-first", "prefill-first"] = Field(
        "decode-first", alias="stageOrder"
    )
    profiles: _Names = Field(default_factory=_Names)
    deciders: _Deciders = Field(default_factory=_Deciders)
    decode_profile: str | None = Field(None, alias="decodeProfile")
    prefill_profile: str | None = Field(None, alias="prefillProfile")
    encode_profile: str | None = Field(None, alias="encodeProfile")

    @model_validator(mode="after")
    def _check(self) -> DisaggParams:
        if self.stage_order == "prefill-first" and self.deciders.prefill is not None:
            raise ValueError("deciders.prefill cannot be used with stageOrder prefill-first")
        return self

    def names(self) -> _Names:
        p = self.profiles
        return _Names(
            decode=self.decode_profile or p.decode,
            prefill=self.prefill_profile or p.prefill,
            encode=self.encode_profile or p.encode,
        )


class DisaggProfileHandler:
    def __init__(
        self,
        name: str = TYPE,
        params: DisaggParams | None = None,
        handle: PluginHandle | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or DisaggParams()
        self.names = self.params.names()
        self._handle = handle
        self.prefill_decider: Decider | None = None
        self.encode_decider: Decider | None = None
        # (model_name, decision_type) -> count: upstream's llm_d_epp_disagg_decision_total.
        self.decisions: Counter[tuple[str, str]] = Counter()
        self._prefill_on = self.params.stage_order == "prefill-first"
        self._encode_on = False

    # -- load time -----------------------------------------------------------------------------

    def check_profiles(self, names: Sequence[str]) -> None:
        n = self.names
        if n.decode not in names:
            raise ConfigError(f"{TYPE} {self.typed_name.name!r}: no profile named {n.decode!r}")
        d = self.params.deciders
        self.prefill_decider = self._decider("prefill", d.prefill)
        self.encode_decider = self._decider("encode", d.encode)
        self._prefill_on = self.prefill_decider is not None or self.params.stage_order == (
            "prefill-first"
        )
        self._encode_on = self.encode_decider is not None
        for stage, on, profile in (
            ("prefill", self._prefill_on, n.prefill),
            ("encode", self._encode_on, n.encode),
        ):
            if on and profile not in names:
                raise ConfigError(
                    f"{TYPE} {self.typed_name.name!r}: the {stage} stage is on but there is no "
                    f"profile named {profile!r} (have: {', '.join(names)})"
                )

    def _decider(self, stage: str, ref: str | None) -> Decider | None:
        if ref is None:
            return None
        if self._handle is None:
            raise ConfigError(f"{TYPE}: deciders.{stage} needs a plugin handle")
        try:
            plugin = self._handle.plugin(ref)
        except PluginValidationError:
            raise ConfigError(
                f"{TYPE} {self.typed_name.name!r}: parameters.deciders.{stage}: no plugin "
                f"named {ref!r}"
            ) from None
        if not isinstance(plugin, Decider):
            raise ConfigError(
                f"{TYPE} {self.typed_name.name!r}: parameters.deciders.{stage}: plugin {ref!r} "
                f"({plugin.typed_name.type}) is not a decider"
            )
        return plugin

    # -- the cycle -----------------------------------------------------------------------------

    def pick(
        self,
        state: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, ProfileRunner],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        n = self.names
        if self.params.stage_order == "prefill-first":
            return self._pick_prefill_first(state, request, results)
        if not results:
            return (n.decode,)
        decode = results.get(n.decode)
        if decode is None or not decode.targets:
            return ()
        target = decode.targets[0]
        if self._encode_on and n.encode not in results and n.encode not in self._skipped(state):
            if cast(Decider, self.encode_decider).disaggregate(state, request, target):
                state.write(PEER_ENDPOINT, target)
                return (n.encode,)
            self._skip(state, n.encode)
        if self._prefill_on and n.prefill not in results and n.prefill not in self._skipped(state):
            self._skip(state, n.prefill)  # asked once either way
            if cast(Decider, self.prefill_decider).disaggregate(state, request, target):
                state.write(PEER_ENDPOINT, target)
                return (n.prefill,)
        return ()

    def _pick_prefill_first(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        n = self.names
        if not results:
            return (n.prefill,)
        prefill = results.get(n.prefill)
        peer = prefill.targets[0] if prefill is not None and prefill.targets else None
        if self._encode_on and n.encode not in results and n.encode not in self._skipped(state):
            self._skip(state, n.encode)
            if cast(Decider, self.encode_decider).disaggregate(state, request, None):
                return (n.encode,)
        if n.decode not in results:
            if peer is not None:
                state.write(PEER_ENDPOINT, peer)
            return (n.decode,)
        return ()

    _SKIPPED: StateKey[set[str]] = StateKey("disagg-skipped")

    def _skipped(self, state: CycleState) -> set[str]:
        return state.get(self._SKIPPED, set())

    def _skip(self, state: CycleState, profile: str) -> None:
        skipped = state.get(self._SKIPPED, None)
        if skipped is None:
            skipped = set()
            state.write(self._SKIPPED, skipped)
        skipped.add(profile)

    def process_results(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        n = self.names
        decode = results.get(n.decode)
        if decode is None or not decode.targets:
            reason = state.get(PROFILE_FAILURES, {}).get(n.decode, "picker returned no endpoint")
            raise PoolExhaustedError(f"failed to find target endpoint: {reason}")
        ran = {k for k, v in results.items() if v is not None and v.targets}
        state.write(STAGES_RUN, frozenset(ran))
        kind = ("encode-" if n.encode in ran else "") + (
            "prefill-decode" if self._remote_prefill(results) else "decode"
        )
        self.decisions[(request.target_model or "unknown", _decision_type(kind))] += 1
        return SchedulingResult(dict(results), n.decode)

    def _remote_prefill(self, results: Mapping[str, ProfileResult | None]) -> bool:
        prefill = results.get(self.names.prefill)
        decode = results.get(self.names.decode)
        if prefill is None or not prefill.targets or decode is None or not decode.targets:
            return False
        return prefill.targets[0].hostport != decode.targets[0].hostport

    def decision_counts(self) -> Mapping[tuple[str, str], int]:
        return dict(self.decisions)

    # -- PreRequest ----------------------------------------------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        headers: dict[str, str] = {}
        results = result.profile_results
        if self._remote_prefill(results):
            prefill = results[self.names.prefill]
            assert prefill is not None
            headers[PREFILLER_HEADER] = prefill.targets[0].hostport
        encode = results.get(self.names.encode)
        if encode is not None and encode.targets:
            headers[ENCODERS_HEADER] = ",".join(e.hostport for e in encode.targets)
        if headers:
            current = state.get(UPSTREAM_HEADERS, None)
            if current is None:
                state.write(UPSTREAM_HEADERS, headers)
            else:
                current.update(headers)


def _decision_type(kind: str) -> str:
    return "decode-only" if kind == "decode" else kind


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    params = parse_params(DisaggParams, name, TYPE, parameters)
    return DisaggProfileHandler(name, params, handle)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[ProfileHandler] = DisaggProfileHandler
