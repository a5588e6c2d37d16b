"""``precise-prefix-cache-producer`` parameters: upstream v0.10's shape and defaults.

``tokenProcessorConfig``, ``indexerConfig`` and ``kvEventsConfig`` mirror llm-d-kv-cache's
configuration structs; what each key does in kvroute (and why some are accepted without
effect, some rejected) is in :mod:`kvroute.scheduling.plugins.prefix.precise_producer`.
Rejections name the key (``parameters.indexerConfig.kvBlockIndexConfig.redisConfig: ...``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from kvroute.config.duration import parse_go_duration
from kvroute.scheduling.plugins.params import PluginParams

__all__ = [
    "IndexerParams",
    "KvBlockIndexParams",
    "KvEventsParams",
    "PodDiscoveryParams",
    "PreciseProducerParams",
    "TokenProcessorParams",
]


class TokenProcessorParams(PluginParams):
    block_size: int = Field(default=0, alias="blockSize", ge=0)  # deprecated spelling
    block_size_tokens: int = Field(default=0, alias="blockSizeTokens", ge=0)
    hash_seed: str = Field(default="", alias="hashSeed")
    hash_algorithm: Literal["", "cbor-fnv", "xxh64"] = Field(default="", alias="hashAlgorithm")

    @property
    def effective_block_size(self) -> int:
        return self.block_size_tokens or self.block_size or 16


class PodDiscoveryParams(PluginParams):
    pod_label_selector: str = Field(
        default="llm-d.ai/inference-serving=true", alias="podLabelSelector"
    )
    pod_namespace: str = Field(default="", alias="podNamespace")
    socket_port: int = Field(default=5557, alias="socketPort", ge=1, le=65535)
    replay_socket_port: int = Field(default=0, alias="replaySocketPort")

    @field_validator("replay_socket_port")
    @classmethod
    def _no_replay(cls, value: int) -> int:
        if value > 0:
            raise ValueError(
                "the KV-events replay socket is not supported by kvroute (lost events drop the "
                "endpoint's entries until fresh events arrive); remove it"
            )
        return value


class KvEventsParams(PluginParams):
    zmq_endpoint: str = Field(default="", alias="zmqEndpoint")
    topic_filter: str = Field(default="kv@", alias="topicFilter")
    concurrency: int = Field(default=4, ge=1)
    engine_type: str = Field(default="vllm", alias="engineType")
    discover_pods: bool = Field(default=True, alias="discoverPods")
    pod_discovery_config: PodDiscoveryParams = Field(
        default_factory=PodDiscoveryParams, alias="podDiscoveryConfig"
    )

    @field_validator("engine_type")
    @classmethod
    def _vllm_only(cls, value: str) -> str:
        if value not in ("", "vllm"):
            raise ValueError(
                f"{value!r} is not supported: kvroute decodes vLLM KV events only (vllm)"
            )
        return "vllm"

    @field_validator("zmq_endpoint")
    @classmethod
    def _zmq_address(cls, value: str) -> str:
        if value and not re.fullmatch(r"(tcp|ipc|inproc)://\S+", value):
            raise ValueError(f"{value!r} is not a ZMQ address such as tcp://0.0.0.0:5557")
        return value


_NOT_HERE = {
    "in_memory_config": "kvroute's index is bounded by the blocks the engines report "
    "(maxBlocksPerServer), not by a key count; remove inMemoryConfig",
    "redis_config": "a Redis-backed index is not supported by kvroute (the index is in-memory, "
    "fed by each replica's own KV-event subscriptions); remove redisConfig",
    "cost_aware_memory_config": "the cost-aware index is not supported by kvroute; remove "
    "costAwareMemoryConfig",
}


class KvBlockIndexParams(PluginParams):
    in_memory_config: dict[str, Any] | None = Field(default=None, alias="inMemoryConfig")
    redis_config: dict[str, Any] | None = Field(default=None, alias="redisConfig")
    cost_aware_memory_config: dict[str, Any] | None = Field(
        default=None, alias="costAwareMemoryConfig"
    )
    enable_metrics: bool = Field(default=False, alias="enableMetrics")
    metrics_logging_interval: float = Field(default=0.0, alias="metricsLoggingInterval")

    @field_validator("in_memory_config", "redis_config", "cost_aware_memory_config")
    @classmethod
    def _unsupported(cls, value: object, info: Any) -> object:
        if value is not None:
            raise ValueError(_NOT_HERE[info.field_name])
        return value

    @field_validator("metrics_logging_interval", mode="before")
    @classmethod
    def _go_duration(cls, value: object) -> float:
        if isinstance(value, int) and not isinstance(value, bool):  # Go's Duration: nanoseconds
            if value < 0:
                raise ValueError("must not be negative")
            return value / 1e9
        return parse_go_duration(value)


class IndexerParams(PluginParams):
    kv_block_index_config: KvBlockIndexParams = Field(
        default_factory=KvBlockIndexParams, alias="kvBlockIndexConfig"
    )
    kv_cache_backend_configs: list[Any] | None = Field(default=None, alias="kvCacheBackendConfigs")
    tokenizers_pool_config: dict[str, Any] | None = Field(
        default=None, alias="tokenizersPoolConfig"
    )

    @field_validator("kv_cache_backend_configs")
    @classmethod
    def _no_weights(cls, value: object) -> object:
        if value is not None:
            raise ValueError(
                "per-medium block weights are not supported by kvroute (a block held in any "
                "medium counts 1); remove kvCacheBackendConfigs"
            )
        return value

    @field_validator("tokenizers_pool_config")
    @classmethod
    def _no_pool(cls, value: object) -> object:
        if value is not None:
            raise ValueError("not supported; configure a token-producer plugin instead")
        return value


class PreciseProducerParams(PluginParams):
    token_processor_config: TokenProcessorParams = Field(
        default_factory=TokenProcessorParams, alias="tokenProcessorConfig"
    )
    indexer_config: IndexerParams = Field(default_factory=IndexerParams, alias="indexerConfig")
    kv_events_config: KvEventsParams = Field(default_factory=KvEventsParams, alias="kvEventsConfig")
    speculative_indexing: bool = Field(default=False, alias="speculativeIndexing")
    speculative_ttl: float = Field(default=2.0, alias="speculativeTTL")
    # kvroute's own
    tokenizer: str | None = None
    tokenizer_cache_size: int = Field(default=1024, alias="tokenizerCacheSize", ge=0)
    max_prefix_blocks_to_match: int = Field(default=2048, alias="maxPrefixBlocksToMatch", gt=0)
    reorder_window: int = Field(default=8, alias="reorderWindow", ge=0)
    max_blocks_per_server: int = Field(default=4_000_000, alias="maxBlocksPerServer", gt=0)

    @field_validator("speculative_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: object) -> float:
        if value == "":
            return 2.0
        seconds = parse_go_duration(value)
        return seconds if seconds > 0 else 2.0  # upstream: a non-positive TTL keeps the default
