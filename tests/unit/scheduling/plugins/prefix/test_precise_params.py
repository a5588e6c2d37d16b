"""``precise-prefix-cache-producer`` parameters: upstream's sample shapes and defaults parse;
unsupported or malformed keys are rejected by the factory, naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext
from kvroute.scheduling.plugins.prefix import PLUGINS
from kvroute.scheduling.plugins.prefix.precise_params import PreciseProducerParams


def test_sample_parameters_parse_with_upstream_defaults() -> None:
    p = PreciseProducerParams.model_validate(
        {
            "tokenProcessorConfig": {"blockSize": 64},
            "indexerConfig": {
                "kvBlockIndexConfig": {"enableMetrics": True, "metricsLoggingInterval": 60000000000}
            },
            "kvEventsConfig": {"zmqEndpoint": "tcp://0.0.0.0:5557"},
        }
    )
    assert p.token_processor_config.effective_block_size == 64  # the deprecated spelling
    assert p.indexer_config.kv_block_index_config.metrics_logging_interval == 60.0  # Go ns
    events = p.kv_events_config
    assert (events.topic_filter, events.discover_pods, events.engine_type) == ("kv@", True, "vllm")
    assert events.pod_discovery_config.socket_port == 5557
    assert (p.speculative_indexing, p.speculative_ttl) == (False, 2.0)
    both = {"tokenProcessorConfig": {"blockSize": 64, "blockSizeTokens": 5, "hashSeed": "42"}}
    assert (
        PreciseProducerParams.model_validate(both).token_processor_config.effective_block_size == 5
    )
    assert PreciseProducerParams().token_processor_config.effective_block_size == 16
    assert PreciseProducerParams.model_validate({"speculativeTTL": "500ms"}).speculative_ttl == 0.5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kvEventsConfig": {"engineType": "sglang"}}, "kvEventsConfig.engineType"),
        (
            {"kvEventsConfig": {"podDiscoveryConfig": {"replaySocketPort": 5558}}},
            "kvEventsConfig.podDiscoveryConfig.replaySocketPort",
        ),
        ({"kvEventsConfig": {"zmqEndpoint": "0.0.0.0:5557"}}, "kvEventsConfig.zmqEndpoint"),
        (
            {"indexerConfig": {"kvBlockIndexConfig": {"redisConfig": {"address": "r:6379"}}}},
            "indexerConfig.kvBlockIndexConfig.redisConfig",
        ),
        (
            {"indexerConfig": {"kvBlockIndexConfig": {"inMemoryConfig": {"size": 10}}}},
            "indexerConfig.kvBlockIndexConfig.inMemoryConfig",
        ),
        (
            {"indexerConfig": {"kvCacheBackendConfigs": [{"name": "gpu", "weight": 1}]}},
            "indexerConfig.kvCacheBackendConfigs",
        ),
        (
            {"indexerConfig": {"tokenizersPoolConfig": {"modelName": "m"}}},
            "indexerConfig.tokenizersPoolConfig",
        ),
        ({"tokenProcessorConfig": {"hashAlgorithm": "md5"}}, "tokenProcessorConfig.hashAlgorithm"),
        ({"tokenProcessorConfig": {"blockSizeTokens": -1}}, "tokenProcessorConfig.blockSizeTokens"),
        ({"speculativeTTL": "soon"}, "speculativeTTL"),
        ({"kvEventsConfig": {"topicfilter": "kv@"}}, "kvEventsConfig.topicfilter"),  # strict
    ],
)
def test_unsupported_or_bad_parameters_are_rejected_by_name(
    params: dict[str, Any], field: str
) -> None:
    with pytest.raises(PluginValidationError) as err:
        PLUGINS["precise-prefix-cache-producer"]("p", params, PluginContext())
    assert f"parameters.{field}" in str(err.value)
