"""llm-d-router's split prefix pipeline: ``token-producer`` → ``approx-prefix-cache-producer`` →
``prefix-cache-scorer``, as the same index kvroute's one-plugin ``prefix-cache-scorer`` runs.

Upstream (v0.10) moved hashing and the LRU index out of the scorer into a data producer; its
samples declare::

    - type: approx-prefix-cache-producer
      parameters: {maxPrefixTokensToMatch: 16384, lruCapacityPerServer: 31250}
    - type: prefix-cache-scorer            # reads the producer's PrefixCacheMatchInfo

Here:

* ``approx-prefix-cache-producer`` is a :class:`PrefixCacheScorer` instance under the producer's
  type name: the same parameters (``autoTune``, ``blockSizeTokens``, ``maxPrefixBlocksToMatch``,
  ``maxPrefixTokensToMatch``, ``lruCapacityPerServer`` and kvroute's extras) with upstream
  v0.10's producer defaults (:class:`ProducerParams`: 131072 tokens, 2048 blocks, blocks of at
  least 64 tokens), the same PrepareData hash-and-match and PreRequest insert. Not being in a
  profile, it never scores.
* ``prefix-cache-scorer`` declared after it, with no index parameters, becomes
  :class:`ProducedPrefixScorer`: it scores from the producer's match (the producer named by
  ``prefixMatchInfoProducerName``, default ``approx-prefix-cache-producer``) and hashes nothing
  itself. With index parameters and a producer, the config is ambiguous and rejected naming
  both. With no producer declared, ``prefix-cache-scorer`` is its own producer (as before, and as
  upstream's auto-created default producer).
* ``token-producer`` (alias ``tokenizer``) with the default ``estimate`` backend is accepted: its
  tokens (each 4 bytes of prompt → one token) are exactly the blocks level-1 hashing already
  cuts (``blockSizeTokens * 4`` characters), so it adds no work. The ``vllm`` backend
  (``modelName``, ``vllm.{url,timeout,mmTimeout}``) renders engine token ids on a vLLM render
  service before the cycle (:mod:`kvroute.scheduling.plugins.prefix.render`), and an
  ``approx-prefix-cache-producer`` declared after it hashes them. The deprecated
  ``udsTokenizerConfig`` and the multimodal ``estimate.image``/``estimate.video`` knobs are
  rejected at load, naming the field.

Upstream's scorer keys ``matchLengthWeight``/``matchLengthScaleTokens`` are not implemented and
are rejected by name (strict parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix import approximate
from kvroute.scheduling.plugins.prefix.approximate import TYPE as SCORER_TYPE
from kvroute.scheduling.plugins.prefix.approximate import (
    PrefixCacheParams,
    PrefixCacheScorer,
    PrefixMatch,
    ProducerParams,
)
from kvroute.scheduling.plugins.prefix.burst import BurstPrefixCacheProducer
from kvroute.scheduling.plugins.prefix.precise_producer import PrecisePrefixCacheProducer
from kvroute.scheduling.plugins.prefix.render import RenderTokenProducer, VllmParams
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)

PRODUCER_TYPE = "approx-prefix-cache-producer"
# The same producer under the multi-cluster type (scheduling/plugins/scorers/multicluster.py).
MULTICLUSTER_PRODUCER_TYPE = "multicluster-approx-prefix-cache-producer"
_APPROX_PRODUCER_TYPES = frozenset({PRODUCER_TYPE, MULTICLUSTER_PRODUCER_TYPE})
# What a ``prefix-cache-scorer`` may name in ``prefixMatchInfoProducerName``.
MatchProducer = PrefixCacheScorer | BurstPrefixCacheProducer | PrecisePrefixCacheProducer
TOKEN_PRODUCER_TYPE = "token-producer"
TOKEN_PRODUCER_ALIAS = "tokenizer"  # upstream's legacy name, deprecated


class ProducedPrefixScorer:
    """``prefix-cache-scorer`` over an ``approx-prefix-cache-producer``'s (or a
    ``burst-prefix-cache-producer``'s) match."""

    category = ScorerCategory.AFFINITY

    def __init__(self, name: str, producer: MatchProducer) -> None:
        self.typed_name = TypedName(SCORER_TYPE, name)
        self.producer = producer

    def match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixMatch:
        return self.producer.match(state, request, endpoints)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return self.producer.score(state, request, endpoints)


class ScorerParams(PluginParams):
    """``prefix-cache-scorer`` parameters when a producer is declared: the producer's name only."""

    prefix_match_info_producer_name: str = Field(
        default=PRODUCER_TYPE, alias="prefixMatchInfoProducerName"
    )


class EstimateParams(PluginParams):
    """``estimate``: only the text estimate (4 bytes/token); the multimodal knobs are refused."""


class TokenProducerParams(PluginParams):
    model_name: str | None = Field(default=None, alias="modelName")
    vllm: VllmParams | None = None
    uds_tokenizer_config: dict[str, Any] | None = Field(default=None, alias="udsTokenizerConfig")
    estimate: EstimateParams | None = None


class TokenProducer:
    """``token-producer`` with the ``estimate`` backend (see the module docstring)."""

    def __init__(self, name: str, type_name: str = TOKEN_PRODUCER_TYPE) -> None:
        self.typed_name = TypedName(type_name, name)


def _producer_factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrefixCacheScorer:
    params = parse_params(ProducerParams, name, PRODUCER_TYPE, parameters)
    try:
        producer = PrefixCacheScorer(name, params, type_name=PRODUCER_TYPE)
    except ConfigError as exc:
        raise PluginValidationError(f"plugin {name!r} ({PRODUCER_TYPE}): {exc.message}") from exc
    # A vllm token-producer declared before it (upstream's TokenizedPrompt dependency): its
    # rendered engine tokens are what the producer hashes.
    for token_name in (TOKEN_PRODUCER_TYPE, TOKEN_PRODUCER_ALIAS):
        try:
            tokens = handle.plugin(token_name)
        except PluginValidationError:
            continue
        if isinstance(tokens, RenderTokenProducer):
            producer.token_source = tokens.typed_name.name
            break
    return producer


def _declared_producer(handle: PluginHandle, producer_name: str) -> MatchProducer | None:
    try:
        plugin = handle.plugin(producer_name)
    except PluginValidationError:
        return None
    if isinstance(plugin, PrefixCacheScorer) and plugin.typed_name.type in _APPROX_PRODUCER_TYPES:
        return plugin
    if isinstance(plugin, BurstPrefixCacheProducer | PrecisePrefixCacheProducer):
        return plugin
    return None


def _scorer_factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrefixCacheScorer | ProducedPrefixScorer:
    raw = dict(parameters or {})
    producer_key = "prefixMatchInfoProducerName"
    producer_name = raw.get(producer_key, PRODUCER_TYPE)
    producer = _declared_producer(handle, producer_name) if isinstance(producer_name, str) else None
    if producer is None:
        if producer_key in raw:
            raise PluginValidationError(
                f"plugin {name!r} ({SCORER_TYPE}): parameters.{producer_key}: no "
                f"{PRODUCER_TYPE} (or burst-/precise-prefix-cache-producer) named "
                f"{producer_name!r} "
                "declared before it"
            )
        return _own_producer_scorer(name, raw, handle)
    index_keys = sorted(k for k in raw if k != producer_key)
    index_aliases = {f.alias or n for n, f in PrefixCacheParams.model_fields.items()}
    index_keys = [k for k in index_keys if k in index_aliases]
    if index_keys:
        raise PluginValidationError(
            f"plugin {name!r} ({SCORER_TYPE}): parameters.{index_keys[0]}: the index is "
            f"{PRODUCER_TYPE} {producer.typed_name.name!r}'s; set "
            f"{', '.join(index_keys)} there"
        )
    parse_params(ScorerParams, name, SCORER_TYPE, raw)
    return ProducedPrefixScorer(name, producer)


def _own_producer_scorer(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrefixCacheScorer:
    """No producer declared: the one-plugin scorer, exactly as ``approximate`` builds it."""
    plugin = approximate.PLUGINS[SCORER_TYPE](name, parameters, handle)
    assert isinstance(plugin, PrefixCacheScorer)
    return plugin


def _token_factory(type_name: str) -> PluginFactory:
    def factory(
        name: str, parameters: Mapping[str, Any], handle: PluginHandle
    ) -> TokenProducer | RenderTokenProducer:
        del handle
        params = parse_params(TokenProducerParams, name, type_name, parameters)
        where = f"plugin {name!r} ({type_name})"
        if params.uds_tokenizer_config is not None:
            raise PluginValidationError(
                f"{where}: parameters.udsTokenizerConfig: the deprecated UDS tokenizer sidecar "
                "is not supported by kvroute; use the vllm backend (vllm.url) or, for local "
                f"engine tokens, tokenizer: <local tokenizer directory> on {PRODUCER_TYPE}"
            )
        if type_name == TOKEN_PRODUCER_ALIAS:
            log.warning(
                "plugin %r: type %r is deprecated; write %r", name, type_name, TOKEN_PRODUCER_TYPE
            )
        if params.vllm is None and params.model_name is None:
            return TokenProducer(name, type_name)
        if params.estimate is not None:
            raise PluginValidationError(
                f"{where}: parameters: only one of 'estimate' or 'vllm'/'modelName' may be set"
            )
        if not params.model_name:
            raise PluginValidationError(
                f"{where}: parameters.modelName: required by the vllm backend"
            )
        return RenderTokenProducer(name, type_name, params.model_name, params.vllm or VllmParams())

    return factory


PLUGINS: Mapping[str, PluginFactory] = {
    PRODUCER_TYPE: _producer_factory,
    SCORER_TYPE: _scorer_factory,
    TOKEN_PRODUCER_TYPE: _token_factory(TOKEN_PRODUCER_TYPE),
    TOKEN_PRODUCER_ALIAS: _token_factory(TOKEN_PRODUCER_ALIAS),
}
