"""dcgm-data-source + dcgm-extractor: real HTTP on loopback to a DCGM-exporter-shaped page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.dcgm import DcgmDataSource, DcgmExtractor
from kvroute.datalayer.http_source import PollFailed, round_interval
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.filters.endpoint_attribute import EndpointAttributeFilter
from kvroute.scheduling.plugins.scorers.endpoint_attribute import EndpointAttributeScorer
from kvroute.wiring import build_epp
from tests.fakes import make_request, make_state

# Our own page in the DCGM exporter's shape: two GPUs of pod-a, one of another pod.
PAGE = """# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",device="nvidia0",modelName="H200",pod="pod-a"} 35
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-2",device="nvidia1",modelName="H200",pod="pod-a"} 72
DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-3",device="nvidia2",modelName="H200",pod="pod-b"} 99
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-1"} 1024
"""


class Exporter:
    def __init__(self) -> None:
        self.page = PAGE
        self.status = 200
        self.hits: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(text=self.page, status=self.status)


@pytest.fixture
async def exporter() -> AsyncIterator[tuple[Exporter, int]]:
    ex = Exporter()
    runner = web.AppRunner(ex.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield ex, runner.addresses[0][1]
    await runner.cleanup()


def build(parameters: dict[str, Any]) -> tuple[DcgmDataSource, DcgmExtractor]:
    reg = default_registry(include_entry_points=False)
    source = reg.create("dcgm-data-source", "dcgm", parameters, PluginContext())
    extractor = reg.create("dcgm-extractor", "x", {}, PluginContext())
    assert isinstance(source, DcgmDataSource)
    assert isinstance(extractor, DcgmExtractor)
    assert source.bind_extractors([extractor]) == []
    return source, extractor


async def test_poll_writes_gpu_utilization_attribute(exporter: tuple[Exporter, int]) -> None:
    ex, port = exporter
    source, _ = build({"port": port, "path": "/dcgm"})
    store = Datastore()
    store.upsert_endpoint("pod-a", "127.0.0.1", 8000)
    store.upsert_endpoint("e-nolabel", "127.0.0.1", 8001)
    source.attach(store)
    try:
        await source.poll_all()
    finally:
        await source.aclose()
    assert ex.hits == ["/dcgm", "/dcgm"]  # the source's port and path, not the inference port
    a = store.get("pod-a")
    assert a is not None
    assert a.attributes["GPUUtilization"] == pytest.approx(0.72)  # max of its own GPUs / 100
    # an endpoint matching no pod label: only unlabelled samples count -> none here -> failed
    other = store.get("e-nolabel")
    assert other is not None
    assert "GPUUtilization" not in other.attributes
    assert source.stats.successes == 1
    assert source.stats.failures == 1
    assert "no sample for pod 'e-nolabel'" in source.stats.last_error


async def test_use_node_address_scrapes_the_node_and_matches_ranks_by_pod(
    exporter: tuple[Exporter, int],
) -> None:
    """The DaemonSet layout: the exporter is reached at the node address, not the pod's."""
    ex, port = exporter
    source, _ = build({"port": port, "useNodeAddress": True})
    store = Datastore()
    # 192.0.2.1 is TEST-NET-1: a scrape of the pod address could not answer
    store.upsert_endpoint("pod-a-rank-0", "192.0.2.1", 8000, node_address="127.0.0.1")
    store.upsert_endpoint("pod-b-rank-1", "192.0.2.2", 8000, node_address="127.0.0.1")
    store.upsert_endpoint("static-0", "127.0.0.1", 8002)  # no node address known
    source.attach(store)
    try:
        await source.poll_all()
    finally:
        await source.aclose()
    assert ex.hits == ["/metrics", "/metrics"]
    util = {e.name: e.attributes.get("GPUUtilization") for e in store.endpoints()}
    assert util == {
        "pod-a-rank-0": pytest.approx(0.72),  # the pod label names the pod, not the rank
        "pod-b-rank-1": pytest.approx(0.99),
        "static-0": None,
    }
    assert source.stats.failures == 1
    assert "'static-0' has no node address" in source.stats.last_error


def test_pod_label_must_name_the_whole_pod() -> None:
    store = Datastore()
    ep = store.upsert_endpoint("pod-a-rank-x", "127.0.0.1", 8000)
    with pytest.raises(PollFailed, match="no sample for pod"):
        DcgmExtractor().extract(ep, 'DCGM_FI_DEV_GPU_UTIL{pod="pod-a"} 50\n')
    ep = store.upsert_endpoint("pod-ab-rank-0", "127.0.0.1", 8001)
    with pytest.raises(PollFailed, match="no sample for pod"):
        DcgmExtractor().extract(ep, 'DCGM_FI_DEV_GPU_UTIL{pod="pod-a"} 50\n')


async def test_background_loop_follows_changes_and_keeps_value_on_failure(
    exporter: tuple[Exporter, int],
) -> None:
    ex, port = exporter
    source, _ = build({"port": port, "interval": "50ms"})
    store = Datastore()
    store.upsert_endpoint("pod-a", "127.0.0.1", 8000)
    source.attach(store)

    async def utilization() -> object:
        ep = store.get("pod-a")
        assert ep is not None
        return ep.attributes.get("GPUUtilization")

    task = asyncio.create_task(source.run_background())
    try:
        for _ in range(100):
            if await utilization() is not None:
                break
            await asyncio.sleep(0.02)
        assert await utilization() == pytest.approx(0.72)
        ex.page = PAGE.replace("} 72", "} 10").replace("} 35", "} 20")
        for _ in range(100):
            if await utilization() == pytest.approx(0.20):
                break
            await asyncio.sleep(0.02)
        assert await utilization() == pytest.approx(0.20)
        ex.status = 503  # exporter down: the last value stays, failures are counted
        before = source.stats.failures
        for _ in range(100):
            if source.stats.failures > before:
                break
            await asyncio.sleep(0.02)
        assert source.stats.failures > before
        assert "HTTP 503" in source.stats.last_error
        assert await utilization() == pytest.approx(0.20)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.aclose()


async def test_unreachable_exporter_is_a_counted_failure() -> None:
    source, _ = build({"port": 1})  # nothing listens on port 1
    store = Datastore()
    store.upsert_endpoint("pod-a", "127.0.0.1", 8000)
    source.attach(store)
    try:
        await source.poll_all()
    finally:
        await source.aclose()
    assert source.stats.failures == 1
    ep = store.get("pod-a")
    assert ep is not None
    assert ep.attributes == {}


def test_extractor_rejects_a_page_without_the_metric() -> None:
    store = Datastore()
    ep = store.upsert_endpoint("pod-a", "127.0.0.1", 8000)
    with pytest.raises(PollFailed, match="DCGM_FI_DEV_GPU_UTIL not found"):
        DcgmExtractor().extract(ep, "DCGM_FI_DEV_FB_USED 1\n")
    # an unlabelled sample (sidecar exporter without Kubernetes mode) counts for any endpoint
    assert DcgmExtractor().extract(ep, 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 50\n') == {
        "GPUUtilization": 0.5
    }


def test_defaults_and_interval_rounding() -> None:
    source, _ = build({})
    assert (source.port, source.path, source.scheme) == (9400, "/metrics", "http")
    assert source.interval == pytest.approx(0.05)
    assert round_interval(1.0) == pytest.approx(1.0)
    assert round_interval(0.07) == pytest.approx(0.05)
    assert round_interval(0.001) == pytest.approx(0.05)
    assert build({"interval": "1s"})[0].interval == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"scheme": "ftp"}, "parameters.scheme"),
        ({"port": 0}, "parameters.port"),
        ({"path": "metrics"}, "parameters.path"),
        ({"interval": "soon"}, "parameters.interval"),
        ({"useNodeAddress": "yes please"}, "parameters.useNodeAddress"),
        ({"portt": 9400}, "parameters.portt"),
    ],
)
def test_bad_source_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError) as err:
        default_registry(include_entry_points=False).create(
            "dcgm-data-source", "dcgm", params, PluginContext()
        )
    assert field in str(err.value)


def test_extractor_takes_no_parameters() -> None:
    with pytest.raises(PluginValidationError, match="takes no parameters"):
        default_registry(include_entry_points=False).create(
            "dcgm-extractor", "x", {"metric": "X"}, PluginContext()
        )


HEAD = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: max-score-picker}]\n"
    "plugins:\n- type: max-score-picker\n"
)


def test_config_binds_the_extractor_under_the_source() -> None:
    text = HEAD + (
        "- {type: dcgm-data-source, name: gpu, parameters: {port: 9400}}\n"
        "- {type: dcgm-extractor}\n"
        "dataLayer:\n  sources:\n  - {pluginRef: gpu, extractors: [{pluginRef: dcgm-extractor}]}\n"
    )
    setup = build_scheduling(parse_epp_config(text, "g.yaml"), default_registry())
    layer = data_layer_setup(setup.effective_config, setup.plugins, "g.yaml")
    (source,) = layer.others
    assert isinstance(source, DcgmDataSource)
    assert [e.typed_name.name for e in source.extractors] == ["dcgm-extractor"]
    assert layer.runs_metrics  # the built-in metrics scraper still runs beside it


def test_wrong_extractor_under_the_source_names_both() -> None:
    text = HEAD + (
        "- {type: dcgm-data-source, name: gpu}\n"
        "- {type: core-metrics-extractor, name: core}\n"
        "dataLayer:\n  sources:\n  - {pluginRef: gpu, extractors: [{pluginRef: core}]}\n"
    )
    with pytest.raises(ConfigError) as err:
        build_scheduling(parse_epp_config(text, "g.yaml"), default_registry(), source="g.yaml")
    message = err.value.message
    assert "dataLayer.sources[0].extractors" in message
    assert "'core' is a core-metrics-extractor, expected dcgm-extractor" in message
    assert "'gpu'" in message


GPU_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: dcgm-data-source, name: dcgm-source, parameters: {port: PORT, interval: "50ms"}}
- {type: dcgm-extractor, name: dcgm-extractor}
- type: endpoint-attribute-filter
  name: gpu-filter
  parameters:
    attribute: GPUUtilization
    producer: dcgm-extractor
    onMissing: Fail
    algorithm: {type: threshold, threshold: {operator: LessThanOrEqual, value: 0.9}}
- type: endpoint-attribute-scorer
  name: gpu-scorer
  parameters:
    attributeKey: GPUUtilization
    producer: dcgm-extractor
    algorithm: {type: linear_lower_is_better, normalization: {fixedRange: {min: 0, max: 1}}}
- type: max-score-picker
dataLayer:
  sources:
  - {pluginRef: dcgm-source, extractors: [{pluginRef: dcgm-extractor}]}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: gpu-filter}, {pluginRef: gpu-scorer}, {pluginRef: max-score-picker}]
"""


async def test_built_graph_polls_and_its_filter_and_scorer_read_the_attribute(
    exporter: tuple[Exporter, int],
) -> None:
    """The whole path: config -> build_epp -> running graph polls the exporter -> the
    profile's filter and scorer see GPUUtilization in the Datastore."""
    _, port = exporter
    config = parse_epp_config(GPU_CONFIG.replace("PORT", str(port)), "gpu.yaml")
    store = Datastore()
    store.upsert_endpoint("pod-a", "127.0.0.1", 8000)  # 72 % busy on the exporter page
    store.upsert_endpoint("pod-b", "127.0.0.1", 8001)  # 99 %; same exporter port
    graph = build_epp(config, store)
    async with graph.running():
        for _ in range(200):
            if all("GPUUtilization" in e.attributes for e in store.endpoints()):
                break
            await asyncio.sleep(0.02)
    util = {e.name: e.attributes.get("GPUUtilization") for e in store.endpoints()}
    assert util == {"pod-a": pytest.approx(0.72), "pod-b": pytest.approx(0.99)}
    gpu_filter = graph.setup.plugins["gpu-filter"]
    gpu_scorer = graph.setup.plugins["gpu-scorer"]
    assert isinstance(gpu_filter, EndpointAttributeFilter)
    assert isinstance(gpu_scorer, EndpointAttributeScorer)
    kept = gpu_filter.filter(make_state(), make_request(), store.endpoints())
    assert [e.name for e in kept] == ["pod-a"]
    scores = gpu_scorer.score(make_state(), make_request(), store.endpoints())
    assert scores["pod-a"] == pytest.approx(0.28)
    assert scores["pod-b"] == pytest.approx(0.01)
