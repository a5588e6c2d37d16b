"""Engine mappings: exact values from each fixture, fallbacks, LoRA rule, overrides, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvroute.datalayer.mappings import (
    BUILTIN_MAPPINGS,
    EngineMapping,
    MappingRegistry,
    MetricSpec,
    extract,
    extract_result,
    parse_spec_alternatives,
)
from kvroute.datalayer.prometheus import MetricsParseError
from kvroute.datastore.endpoint import ENGINE_TYPE_LABEL, EndpointMetrics
from kvroute.errors import ConfigError

FIXTURES = Path(__file__).parents[2] / "testdata" / "metrics"
REGISTRY = MappingRegistry()


def _page(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def _mapping(engine: str) -> EngineMapping:
    mapping = REGISTRY.get(engine)
    assert mapping is not None
    return mapping


@pytest.mark.parametrize(
    ("fixture", "engine", "expected"),
    [
        (
            "vllm",
            "vllm",
            EndpointMetrics(
                waiting_queue_size=3,
                running_queue_size=12,
                kv_cache_usage=0.4213,
                active_models=frozenset({"sql-lora", "tweet-summary"}),
                waiting_models=frozenset({"chat-lora"}),
                max_active_models=4,
                cache_block_size=16,
                cache_num_blocks=27153,
                updated_at=50.0,
            ),
        ),
        (
            "vllm_legacy",
            "vllm",
            EndpointMetrics(
                waiting_queue_size=17,
                running_queue_size=5,
                kv_cache_usage=0.875,
                max_active_models=2,
                cache_block_size=32,
                cache_num_blocks=9001,
                updated_at=50.0,
            ),
        ),
        (
            "sglang",
            "sglang",
            EndpointMetrics(
                waiting_queue_size=4,
                running_queue_size=9,
                kv_cache_usage=0.31,
                cache_block_size=1,
                cache_num_blocks=198201,
                updated_at=50.0,
            ),
        ),
        (
            "trtllm",
            "trtllm-serve",
            EndpointMetrics(
                waiting_queue_size=0,
                running_queue_size=21,
                kv_cache_usage=0.6640625,
                cache_block_size=64,
                cache_num_blocks=4096,
                updated_at=50.0,
            ),
        ),
        (
            "triton",
            "triton-tensorrt-llm",
            EndpointMetrics(
                waiting_queue_size=6,
                running_queue_size=14,
                kv_cache_usage=0.28125,
                cache_block_size=128,
                cache_num_blocks=2048,
                updated_at=50.0,
            ),
        ),
    ],
    ids=["vllm", "vllm-legacy-gpu-cache", "sglang", "trtllm-serve", "triton"],
)
def test_extract_exact_values_per_engine(
    fixture: str, engine: str, expected: EndpointMetrics
) -> None:
    result = extract_result(_page(fixture), _mapping(engine), now=50.0)
    assert result.metrics == expected
    assert result.missing == ()
    assert result.problems == ()


def test_garbage_page_is_a_parse_error() -> None:
    with pytest.raises(MetricsParseError):
        extract(_page("garbage"), _mapping("vllm"), now=1.0)


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("", "none of the vllm metrics"),
        ("# HELP x y\nother_metric 1\n", "none of the vllm metrics"),
        ("<html><body>404 page not found</body></html>", "none of the vllm metrics"),
        ('vllm:num_requests_waiting{model_name="m" 3\n', "malformed sample line"),
        ("vllm:num_requests_waiting NaN\n", "no usable vllm metric"),
    ],
    ids=["empty", "other-exporter", "html", "broken-wanted-line", "only-nan"],
)
def test_pages_without_usable_metrics_raise(page: str, message: str) -> None:
    with pytest.raises(MetricsParseError, match=message):
        extract(page, _mapping("vllm"), now=1.0)


def test_wrong_engine_label_reads_nothing() -> None:
    """An SGLang page read with the vLLM mapping is an error, not an idle-looking endpoint."""
    with pytest.raises(MetricsParseError, match="none of the vllm metrics"):
        extract(_page("sglang"), _mapping("vllm"), now=1.0)


def test_partial_page_keeps_previous_values_and_reports_missing() -> None:
    previous = EndpointMetrics(
        waiting_queue_size=9, running_queue_size=8, kv_cache_usage=0.7, updated_at=1.0
    )
    page = "vllm:num_requests_waiting 2\n"
    result = extract_result(page, _mapping("vllm"), now=2.0, previous=previous)
    assert result.metrics.waiting_queue_size == 2
    assert result.metrics.running_queue_size == 8  # kept
    assert result.metrics.kv_cache_usage == 0.7  # kept
    assert result.metrics.updated_at == 2.0
    assert result.missing == ("running_queue_size", "kv_cache_usage", "lora", "cache_info")


def test_unusable_value_keeps_previous_and_is_reported() -> None:
    previous = EndpointMetrics(running_queue_size=8, updated_at=1.0)
    page = "vllm:num_requests_waiting 2\nvllm:num_requests_running NaN\n"
    result = extract_result(page, _mapping("vllm"), now=2.0, previous=previous)
    assert result.metrics.running_queue_size == 8
    assert result.problems == (
        "running_queue_size: unusable value nan in vllm:num_requests_running",
    )


@pytest.mark.parametrize(
    ("page", "kv"),
    [
        ("vllm:kv_cache_usage_perc 0.25\nvllm:gpu_cache_usage_perc 0.75\n", 0.25),
        ("vllm:gpu_cache_usage_perc 0.75\n", 0.75),
        ("vllm:gpu_cache_usage_perc 0.75\nvllm:kv_cache_usage_perc 0.25\n", 0.25),
    ],
    ids=["both-new-wins", "legacy-only", "order-on-page-irrelevant"],
)
def test_vllm_kv_falls_back_to_gpu_cache_usage(page: str, kv: float) -> None:
    assert extract(page, _mapping("vllm"), now=1.0).kv_cache_usage == kv


@pytest.mark.parametrize(
    ("lines", "active", "waiting", "max_lora"),
    [
        (
            [
                'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a",'
                'waiting_lora_adapters=""} 100',
                'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",'
                'waiting_lora_adapters="c"} 300',
                'vllm:lora_requests_info{max_lora="4",running_lora_adapters="b",'
                'waiting_lora_adapters=""} 200',
            ],
            {"a", "b"},
            {"c"},
            4,
        ),
        (
            [
                'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",'
                'waiting_lora_adapters=""} 1.7e9',
            ],
            set(),
            set(),
            2,
        ),
        (
            [
                'vllm:lora_requests_info{max_lora="8",running_lora_adapters=" x , ,y ",'
                'waiting_lora_adapters="z,"} 5',
            ],
            {"x", "y"},
            {"z"},
            8,
        ),
        (
            [
                'vllm:lora_requests_info{max_lora="3",running_lora_adapters="new",'
                'waiting_lora_adapters=""} 2e9',
                'vllm:lora_requests_info{max_lora="3",running_lora_adapters="nan",'
                'waiting_lora_adapters=""} NaN',
            ],
            {"new"},
            set(),
            3,
        ),
    ],
    ids=["latest-of-three", "empty-adapters", "csv-blanks-trimmed", "nan-series-ignored"],
)
def test_lora_takes_series_with_largest_timestamp_value(
    lines: list[str], active: set[str], waiting: set[str], max_lora: int
) -> None:
    page = "vllm:num_requests_waiting 0\n" + "\n".join(lines) + "\n"
    metrics = extract(page, _mapping("vllm"), now=1.0)
    assert metrics.active_models == active
    assert metrics.waiting_models == waiting
    assert metrics.max_active_models == max_lora


def test_bad_max_lora_is_a_problem_not_a_zero() -> None:
    page = (
        'vllm:lora_requests_info{max_lora="many",running_lora_adapters="a",'
        'waiting_lora_adapters=""} 1\n'
    )
    previous = EndpointMetrics(max_active_models=6)
    result = extract_result(page, _mapping("vllm"), now=1.0, previous=previous)
    assert result.metrics.active_models == {"a"}
    assert result.metrics.max_active_models == 6
    assert result.problems == ("max_active_models: max_lora='many' is not an integer",)


def test_latest_timestamp_wins_among_several_series() -> None:
    page = (
        'vllm:num_requests_waiting{engine="0"} 5 1000\n'
        'vllm:num_requests_waiting{engine="1"} 7 3000\n'
        'vllm:num_requests_waiting{engine="2"} 9 2000\n'
    )
    assert extract(page, _mapping("vllm"), now=1.0).waiting_queue_size == 7


def test_without_timestamps_the_first_series_wins() -> None:
    page = 'vllm:num_requests_waiting{engine="0"} 5\nvllm:num_requests_waiting{engine="1"} 7\n'
    assert extract(page, _mapping("vllm"), now=1.0).waiting_queue_size == 5


def test_label_matchers_select_series() -> None:
    page = _page("triton")
    spec = MetricSpec.parse("nv_trt_llm_request_metrics{request_type=context}")
    mapping = EngineMapping(name="custom", queued=(spec,))
    assert extract(page, mapping, now=1.0).waiting_queue_size == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:num_requests_waiting", MetricSpec("vllm:num_requests_waiting")),
        ("m{a=b}", MetricSpec("m", (("a", "b"),))),
        ('m{a="b"}', MetricSpec("m", (("a", "b"),))),
        ('  m { b = "2" , a=1 }  ', MetricSpec("m", (("a", "1"), ("b", "2")))),
        ('m{a="x,y"}', MetricSpec("m", (("a", "x,y"),))),
        ('m{a="q\\"q"}', MetricSpec("m", (("a", 'q"q'),))),
        ("m{}", MetricSpec("m")),
    ],
    ids=[
        "bare",
        "unquoted",
        "quoted",
        "blanks-sorted",
        "comma-in-quotes",
        "escaped-quote",
        "empty",
    ],
)
def test_metric_spec_parse(text: str, expected: MetricSpec) -> None:
    assert MetricSpec.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "m{a}", "m{a=}", "m{a=b", "m}", "m{a=b}x", "1m", "m{a=b,,c=d}x"],
    ids=["empty", "no-eq", "no-value", "unclosed", "stray-brace", "trailing", "digit", "junk"],
)
def test_metric_spec_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        MetricSpec.parse(text)


def test_metric_spec_str_round_trips() -> None:
    spec = MetricSpec.parse("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}")
    assert str(spec) == 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}'
    assert MetricSpec.parse(str(spec)) == spec


def test_spec_alternatives() -> None:
    assert parse_spec_alternatives("a or b{x=y}") == (
        MetricSpec("a"),
        MetricSpec("b", (("x", "y"),)),
    )
    assert parse_spec_alternatives("") == ()
    assert parse_spec_alternatives(None) == ()


# -- registry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "engine"),
    [
        ({}, "vllm"),
        ({ENGINE_TYPE_LABEL: "sglang"}, "sglang"),
        ({ENGINE_TYPE_LABEL: "trtllm-serve"}, "trtllm-serve"),
        ({ENGINE_TYPE_LABEL: "triton-tensorrt-llm"}, "triton-tensorrt-llm"),
        ({ENGINE_TYPE_LABEL: ""}, "vllm"),
        ({ENGINE_TYPE_LABEL: "unknown-engine"}, "vllm"),
    ],
    ids=["unlabeled", "sglang", "trtllm", "triton", "empty-label", "unknown-falls-back"],
)
def test_registry_selects_by_engine_label(labels: dict[str, str], engine: str) -> None:
    assert REGISTRY.for_labels(labels).name == engine


def test_builtin_engines() -> None:
    assert REGISTRY.names() == tuple(sorted(m.name for m in BUILTIN_MAPPINGS))
    assert set(REGISTRY.names()) == {"vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm"}


def test_override_replaces_builtin_completely_and_empty_disables() -> None:
    registry = MappingRegistry.from_params(
        {
            "engineConfigs": [
                {
                    "name": "vllm",
                    "queuedRequestsSpec": "vllm:num_requests_waiting",
                    "runningRequestsSpec": "",
                    "kvUsageSpec": "vllm:gpu_cache_usage_perc",
                }
            ]
        }
    )
    mapping = registry.for_labels({})
    assert mapping.running == ()
    assert mapping.lora is None  # not given: replaced completely, so disabled
    assert mapping.cache_info is None
    previous = EndpointMetrics(running_queue_size=77)
    result = extract_result(_page("vllm"), mapping, now=3.0, previous=previous)
    assert result.metrics.waiting_queue_size == 3
    assert result.metrics.running_queue_size == 77  # disabled metric: never read
    assert result.metrics.kv_cache_usage == 0.0  # the new page only has kv_cache_usage_perc
    assert result.missing == ("kv_cache_usage",)
    # the other built-ins are untouched
    assert registry.get("sglang") == REGISTRY.get("sglang")


def test_override_adds_engine_and_custom_label_key_and_default() -> None:
    registry = MappingRegistry.from_params(
        {
            "engineLabelKey": "llm-d.ai/engine-type",
            "defaultEngine": "sglang",
            "engineConfigs": [
                {
                    "name": "my-engine",
                    "queuedRequestsSpec": "my_queue{pool=a}",
                    "cacheBlockSizeSpec": "my_block_size",
                },
            ],
        }
    )
    assert registry.for_labels({}).name == "sglang"
    assert registry.for_labels({ENGINE_TYPE_LABEL: "vllm"}).name == "sglang"  # other key
    mine = registry.for_labels({"llm-d.ai/engine-type": "my-engine"})
    page = 'my_queue{pool="b"} 1\nmy_queue{pool="a"} 4\nmy_block_size 32\n'
    metrics = extract(page, mine, now=1.0)
    assert (metrics.waiting_queue_size, metrics.cache_block_size) == (4, 32)


def test_mapping_with_everything_disabled_only_refreshes_time() -> None:
    registry = MappingRegistry.from_params({"engineConfigs": [{"name": "vllm"}]})
    previous = EndpointMetrics(waiting_queue_size=2, updated_at=1.0)
    metrics = extract("anything at all", registry.default, now=9.0, previous=previous)
    assert metrics == EndpointMetrics(waiting_queue_size=2, updated_at=9.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"engineConfigs": [{"name": ""}]}, "engineConfigs.0.name"),
        ({"engineConfigs": [{"name": "x", "queuedSpec": "a"}]}, "queuedSpec: Extra inputs"),
        ({"engineConfigs": [{"name": "x", "kvUsageSpec": "a{b}"}]}, r"engineConfigs\[0\] \(x\)"),
        ({"engineConfigs": [{"name": "x", "loraSpec": "a or b"}]}, "loraSpec takes one"),
        ({"defaultEngine": "nope"}, "defaultEngine: 'nope' is not one of"),
        ({"engineConfigs": [{"name": "x"}, {"name": "x"}]}, "defined twice"),
        ({"unknown": 1}, "unknown: Extra inputs"),
    ],
    ids=[
        "empty-name",
        "unknown-field",
        "bad-spec",
        "alternatives-for-single",
        "unknown-default",
        "duplicate",
        "unknown-param",
    ],
)
def test_invalid_params_are_config_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MappingRegistry.from_params(params)
