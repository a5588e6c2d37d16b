"""multicluster-metrics-data-source + multicluster-metrics-extractor: real HTTP(S) on loopback to
peer-EPP-shaped metrics pages, the load-time dependency checks, and the built graph."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.http_source import PollFailed
from kvroute.datalayer.multicluster import (
    KV_CACHE_UTILIZATION_ATTRIBUTE,
    MAX_RESPONSE_BYTES,
    QUEUE_SIZE_ATTRIBUTE,
    MultiClusterExtractorParams,
    MultiClusterMetricsExtractor,
    MultiClusterMetricsSource,
    MultiClusterSourceParams,
    tls_context,
)
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.wiring import build_epp
from tests.fakes import make_request, make_state

KV = KV_CACHE_UTILIZATION_ATTRIBUTE
QUEUE = QUEUE_SIZE_ATTRIBUTE


def page(kv: float, queue: float) -> str:
    """Our own page in the shape of a peer EPP's /metrics: the pool gauges among others."""
    return (
        "# HELP llm_d_epp_average_kv_cache_utilization Average KV-cache utilization.\n"
        "# TYPE llm_d_epp_average_kv_cache_utilization gauge\n"
        f'llm_d_epp_average_kv_cache_utilization{{name="pool-a"}} {kv}\n'
        "# TYPE llm_d_epp_average_queue_size gauge\n"
        f'llm_d_epp_average_queue_size{{name="pool-a"}} {queue}\n'
        "# TYPE llm_d_epp_ready_pods gauge\n"
        'llm_d_epp_ready_pods{name="pool-a"} 4\n'
    )


class Peer:
    """A peer cluster's metrics endpoint (aiohttp on loopback)."""

    def __init__(self, text: str) -> None:
        self.page = text
        self.hits: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        return web.Response(text=self.page)


async def serve(peer: Peer, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(peer.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, int]]:
    p = Peer(page(0.25, 3))
    runner, port = await serve(p)
    yield p, port
    await runner.cleanup()


def build(parameters: dict[str, Any]) -> MultiClusterMetricsSource:
    reg = default_registry(include_entry_points=False)
    source = reg.create("multicluster-metrics-data-source", "mc", parameters, PluginContext())
    extractor = reg.create("multicluster-metrics-extractor", "x", {}, PluginContext())
    assert isinstance(source, MultiClusterMetricsSource)
    assert source.bind_extractors([extractor]) == []
    return source


# -- the extractor ---------------------------------------------------------------------------


def test_extractor_writes_both_pool_attributes_latest_series_wins() -> None:
    text = page(0.4, 7) + 'llm_d_epp_average_queue_size{name="pool-b"} 9 1700000000000\n'
    got = MultiClusterMetricsExtractor().extract(_endpoint(), text)
    assert got == {KV: pytest.approx(0.4), QUEUE: 9.0}  # the timestamped series is the latest


def test_extractor_spec_with_labels_and_partial_pages() -> None:
    params = MultiClusterExtractorParams(queue_size_metric='llm_d_epp_average_queue_size{name="b"}')
    extractor = MultiClusterMetricsExtractor("x", params)
    text = page(0.5, 2) + 'llm_d_epp_average_queue_size{name="b"} 11\n'
    assert extractor.extract(_endpoint(), text) == {KV: 0.5, QUEUE: 11.0}
    # a page with only one gauge writes that one; the other attribute is left as it was
    only_kv = "llm_d_epp_average_kv_cache_utilization 0.9\n"
    assert extractor.extract(_endpoint(), only_kv) == {KV: 0.9}
    with pytest.raises(PollFailed, match="none of llm_d_epp_average_kv_cache_utilization"):
        extractor.extract(_endpoint(), "other_metric 1\n")
    empty = MultiClusterExtractorParams(kv_cache_utilization_metric="")  # upstream: the default
    assert empty.kv_cache_utilization_metric == "llm_d_epp_average_kv_cache_utilization"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kvCacheUtilizationMetric": "bad name{"}, "parameters.kvCacheUtilizationMetric"),
        ({"queueSizeMetric": "q{tier=}"}, "parameters.queueSizeMetric"),
        ({"engineConfigs": []}, "parameters.engineConfigs"),
    ],
)
def test_bad_extractor_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    reg = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError, match=field):
        reg.create("multicluster-metrics-extractor", "x", params, PluginContext())


# -- the source ------------------------------------------------------------------------------


def test_source_defaults_are_the_cross_cluster_ones() -> None:
    source = build({})
    p = source.params
    assert (p.scheme, p.path, p.insecure_skip_verify) == ("https", "/metrics", False)
    assert source.replaces_metrics  # the per-pod scraper does not run
    assert source.timeout >= 1.0  # a cluster is further away than a pod


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"port": 9090}, "parameters.port"),
        ({"scheme": "ftp"}, "parameters.scheme"),
        ({"path": "metrics"}, "parameters.path"),
        ({"clientCertPath": "/c.pem"}, "clientKeyPath must be set together"),
        ({"interval": "soon"}, "parameters.interval"),
    ],
)
def test_bad_source_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    reg = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError, match=field):
        reg.create("multicluster-metrics-data-source", "mc", params, PluginContext())


def test_wrong_extractor_type_is_named() -> None:
    source = build({})
    core = default_registry().create("core-metrics-extractor", "core", {}, PluginContext())
    problems = source.bind_extractors([core])
    assert problems == [
        "plugin 'core' is a core-metrics-extractor, expected multicluster-metrics-extractor "
        "under multicluster-metrics-data-source 'mc'"
    ]


async def test_poll_writes_attributes_and_cluster_metrics(peer: tuple[Peer, int]) -> None:
    server, port = peer
    source = build({"scheme": "http"})
    store = Datastore()
    store.upsert_endpoint("default/cluster-a", "127.0.0.1", port)
    source.attach(store)
    try:
        await source.poll_all()
        ep = store.get("default/cluster-a")
        assert ep is not None
        assert dict(ep.attributes) == {KV: 0.25, QUEUE: 3.0}
        # kvroute: the aggregates are the cluster's metrics too (saturation detector)
        assert (ep.metrics.kv_cache_usage, ep.metrics.waiting_queue_size) == (0.25, 3)
        assert ep.metrics.updated_at > 0
        assert server.hits == ["/metrics"]
        server.page = page(0.75, 12)
        await source.poll_all()
        ep = store.get("default/cluster-a")
        assert ep is not None
        assert dict(ep.attributes) == {KV: 0.75, QUEUE: 12.0}
        assert ep.metrics.waiting_queue_size == 12
        server.page = "garbage that is not a metric line\n"
        await source.poll_all()  # a failed poll keeps the previous values
        ep = store.get("default/cluster-a")
        assert ep is not None
        assert ep.attributes[QUEUE] == 12.0
        assert (source.stats.successes, source.stats.failures) == (2, 1)
    finally:
        await source.aclose()


async def test_metrics_address_label_moves_the_scrape(peer: tuple[Peer, int]) -> None:
    server, port = peer
    source = build({"scheme": "http", "path": "/pool-metrics"})
    store = Datastore()
    # the gateway address is not where the metrics are; the labels say where they are
    store.upsert_endpoint(
        "default/b",
        "gw.cluster-b.invalid",
        443,
        {"metricsAddress": "127.0.0.1", "metricsPort": str(port)},
    )
    store.upsert_endpoint(
        "default/c",
        "gw.cluster-c.invalid",
        443,
        {"metricsAddress": "127.0.0.1", "metricsPort": "x"},
    )
    source.attach(store)
    try:
        assert source.url(store.endpoints()[0]) == f"http://127.0.0.1:{port}/pool-metrics"
        await source.poll_all()
        b, c = store.get("default/b"), store.get("default/c")
        assert b is not None
        assert c is not None
        assert b.attributes[KV] == 0.25
        assert KV not in c.attributes  # an invalid metricsPort: a counted failure, no crash
        assert source.stats.failures == 1
        assert server.hits == ["/pool-metrics"]
    finally:
        await source.aclose()


async def test_page_over_the_cap_is_a_failed_poll(peer: tuple[Peer, int]) -> None:
    server, port = peer
    source = build({"scheme": "http"})
    store = Datastore()
    store.upsert_endpoint("default/a", "127.0.0.1", port)
    source.attach(store)
    try:
        server.page = page(0.5, 1) + "# padding\n" * (MAX_RESPONSE_BYTES // 10 + 1)
        await source.poll_all()
        ep = store.get("default/a")
        assert ep is not None
        assert KV not in ep.attributes
        assert "larger than" in source.stats.last_error
    finally:
        await source.aclose()


# -- HTTPS: verification on by default, caCertPath read at the first scrape --------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (CA file, server context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public: Any, *, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name("test-ca"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "srv.pem", tmp / "srv.key"
    ca_file.write_bytes(cert("test-ca", ca_key.public_key(), ca=True).public_bytes(pem))
    cert_file.write_bytes(cert("peer", key.public_key(), ca=False).public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


async def test_https_verifies_the_peer_and_reads_the_ca_late(tmp_path: Path) -> None:
    ca_file, server_ctx = _pki(tmp_path)
    peer = Peer(page(0.1, 1))
    runner, port = await serve(peer, server_ctx)
    mounted = tmp_path / "mounted-ca.pem"  # not there yet when the config loads
    with_ca = build({"caCertPath": str(mounted)})
    system_roots = build({})
    insecure = build({"insecureSkipVerify": True})
    stores = []
    try:
        for source in (with_ca, system_roots, insecure):
            store = Datastore()
            store.upsert_endpoint("default/a", "127.0.0.1", port)
            source.attach(store)
            stores.append(store)
            await source.poll_all()
        assert "parameters.caCertPath" in with_ca.stats.last_error  # not mounted yet
        assert "CERTIFICATE_VERIFY_FAILED" in system_roots.stats.last_error  # verified: refused
        assert stores[2].get("default/a").attributes[KV] == 0.1  # type: ignore[union-attr]
        mounted.write_bytes(ca_file.read_bytes())  # the secret appears: the next scrape uses it
        await with_ca.poll_all()
        assert stores[0].get("default/a").attributes[KV] == 0.1  # type: ignore[union-attr]
    finally:
        for source in (with_ca, system_roots, insecure):
            await source.aclose()
        await runner.cleanup()


def test_unreadable_client_certificate_names_the_parameters(tmp_path: Path) -> None:
    params = MultiClusterSourceParams(
        client_cert_path=str(tmp_path / "c.pem"), client_key_path=str(tmp_path / "k.pem")
    )
    with pytest.raises(PollFailed, match=r"parameters\.clientCertPath/clientKeyPath"):
        tls_context(params)
    assert tls_context(MultiClusterSourceParams(scheme="http", ca_cert_path="/nowhere")) is True
    skip = tls_context(MultiClusterSourceParams(insecure_skip_verify=True, ca_cert_path="/nowhere"))
    assert isinstance(skip, ssl.SSLContext)
    assert skip.verify_mode == ssl.CERT_NONE  # the CA is not even read when not verifying


# -- config loading ----------------------------------------------------------------------------

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: multicluster-file-discovery, name: discovery, parameters: {path: CLUSTERS}}
- {type: multicluster-metrics-data-source, name: metrics-source, parameters: SOURCE}
- {type: multicluster-metrics-extractor, name: metrics-extractor}
- {type: multicluster-session-affinity-filter, name: session-affinity}
- {type: multicluster-kv-cache-utilization-scorer, name: kv-cache}
- {type: multicluster-queue-scorer, name: queue}
- type: max-score-picker
- type: single-profile-handler
dataLayer:
  discovery: {pluginRef: discovery}
  sources:
  - pluginRef: metrics-source
    extractors: [{pluginRef: metrics-extractor}]
"""


def _config(clusters: str = "/etc/epp/clusters.yaml", source: str = "{scheme: https}") -> str:
    return CONFIG.replace("CLUSTERS", clusters).replace("SOURCE", source)


def test_documented_wiring_loads_with_the_multicluster_types() -> None:
    setup = build_scheduling(parse_epp_config(_config(), "mc.yaml"), default_registry())
    types = {n: p.typed_name.type for n, p in setup.plugins.items()}
    assert {k: types[k] for k in ("discovery", "metrics-source", "metrics-extractor")} == {
        "discovery": "multicluster-file-discovery",
        "metrics-source": "multicluster-metrics-data-source",
        "metrics-extractor": "multicluster-metrics-extractor",
    }
    layer = data_layer_setup(setup.effective_config, setup.plugins, "mc.yaml")
    assert not layer.runs_metrics  # the cluster source replaces the per-pod scraper
    (source,) = layer.others
    assert [e.typed_name.name for e in source.extractors] == ["metrics-extractor"]  # type: ignore[attr-defined]


def test_scorers_without_the_extractor_fail_to_load() -> None:
    text = _config().replace(
        "- {type: multicluster-metrics-extractor, name: metrics-extractor}\n", ""
    )
    text = text.replace("    extractors: [{pluginRef: metrics-extractor}]\n", "")
    with pytest.raises(ConfigError) as err:
        build_scheduling(parse_epp_config(text, "mc.yaml"), default_registry(), source="mc.yaml")
    message = err.value.message
    assert "plugin 'kv-cache' (multicluster-kv-cache-utilization-scorer) requires the" in message
    assert f"endpoint attribute {KV!r}" in message
    assert "plugin 'queue' (multicluster-queue-scorer) requires the" in message
    assert f"endpoint attribute {QUEUE!r}" in message
    assert "list a multicluster-metrics-extractor under its data source" in message


def test_scorers_without_any_data_layer_fail_to_load() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: multicluster-queue-scorer, name: queue}\n"
    )
    with pytest.raises(ConfigError, match=r"'queue' .*requires the endpoint attribute"):
        build_scheduling(parse_epp_config(text, "q.yaml"), default_registry(), source="q.yaml")


def test_extractor_declared_but_not_listed_does_not_count() -> None:
    text = _config().replace("    extractors: [{pluginRef: metrics-extractor}]\n", "")
    with pytest.raises(ConfigError) as err:
        build_scheduling(parse_epp_config(text, "mc.yaml"), default_registry(), source="mc.yaml")
    # declared but under no source, it never runs: the scorers have no producer
    assert "'kv-cache' (multicluster-kv-cache-utilization-scorer) requires" in err.value.message


def test_wrong_extractor_under_the_source_fails_to_load() -> None:
    text = _config().replace(
        "- {type: multicluster-metrics-extractor, name: metrics-extractor}",
        "- {type: core-metrics-extractor, name: metrics-extractor}",
    )
    with pytest.raises(ConfigError) as err:
        build_scheduling(parse_epp_config(text, "mc.yaml"), default_registry(), source="mc.yaml")
    message = err.value.message
    assert "dataLayer.sources[0].extractors" in message
    assert "expected multicluster-metrics-extractor" in message
    assert "requires the endpoint attribute" in message  # and so the scorers have no producer


# -- the whole path --------------------------------------------------------------------------


async def test_built_graph_discovers_scrapes_and_routes_to_the_idle_cluster(tmp_path: Path) -> None:
    """config -> build_epp -> discovery from a real file -> the running graph scrapes two
    peer clusters over HTTP -> the profile's scorers prefer the less loaded one."""
    busy, idle = Peer(page(0.9, 20)), Peer(page(0.2, 2))
    (r1, p1), (r2, p2) = await serve(busy), await serve(idle)
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(
        "endpoints:\n"
        f"- {{name: busy, address: localhost, port: '{p1}'}}\n"
        f"- {{name: idle, address: 127.0.0.1, port: '{p2}'}}\n"
    )
    config = parse_epp_config(_config(str(clusters), '{scheme: http, interval: "50ms"}'), "mc.yaml")
    from kvroute.datastore.file_discovery import file_discovery_for

    discovery = file_discovery_for(config)
    assert discovery is not None
    assert discovery.hostnames
    store = Datastore()
    discovery.load(store)
    graph = build_epp(config, store)
    try:
        async with graph.running():
            for _ in range(200):
                if all(QUEUE in e.attributes for e in store.endpoints()):
                    break
                await asyncio.sleep(0.02)
        queue = {e.name: e.attributes.get(QUEUE) for e in store.endpoints()}
        assert queue == {"default/busy": 20.0, "default/idle": 2.0}
        result = graph.setup.scheduler.schedule(
            make_request(), store.endpoints(), state=make_state()
        )
        assert result.primary is not None
        assert [t.name for t in result.primary.targets] == ["default/idle"]
        assert busy.hits
        assert idle.hits
    finally:
        await r1.cleanup()
        await r2.cleanup()


def _endpoint() -> Any:
    store = Datastore()
    return store.upsert_endpoint("default/a", "127.0.0.1", 1)


async def test_reads_the_pool_gauges_of_a_kvroute_peer() -> None:
    """A kvroute EPP as the peer: its own llm_d_epp_* pool gauges, rendered by its registry."""
    from prometheus_client import CollectorRegistry, generate_latest

    from kvroute.observability.llmd_metrics import LlmdMetrics

    registry = CollectorRegistry()
    metrics = LlmdMetrics(registry)
    metrics.pool["average_kv_cache_utilization"].labels(name="pool-a").set(0.625)
    metrics.pool["average_queue_size"].labels(name="pool-a").set(4.5)
    peer = Peer(generate_latest(registry).decode())
    runner, port = await serve(peer)
    source = build({"scheme": "http"})
    store = Datastore()
    store.upsert_endpoint("default/kvroute-peer", "127.0.0.1", port)
    source.attach(store)
    try:
        await source.poll_all()
        ep = store.get("default/kvroute-peer")
        assert ep is not None
        assert dict(ep.attributes) == {KV: 0.625, QUEUE: 4.5}
        assert ep.metrics.waiting_queue_size == 4  # rounded half to even
    finally:
        await source.aclose()
        await runner.cleanup()


@pytest.mark.parametrize("idle_first", [True, False])
async def test_the_epp_routes_a_request_to_the_idle_cluster(
    tmp_path: Path, idle_first: bool
) -> None:
    """The whole EPP (EppApp, real gRPC ext_proc, flow control on): clusters from the file,
    scraped over HTTP; the request's destination is the idle cluster's gateway, whichever of
    the two it is."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from kvroute.app import EppApp
    from kvroute.settings import EppSettings
    from tests.unit.extproc.test_stream import COMPLETION, req_body, req_headers, set_headers

    first, second = Peer(page(0.1, 0)), Peer(page(0.7, 4))  # idle, busy
    if not idle_first:
        first.page, second.page = second.page, first.page
    (r1, p1), (r2, p2) = await serve(first), await serve(second)
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(
        "endpoints:\n"
        f"- {{name: one, address: 127.0.0.1, port: '{p1}'}}\n"
        f"- {{name: two, address: localhost, port: '{p2}'}}\n"
    )
    settings = EppSettings(
        config_text=_config(str(clusters), '{scheme: http, interval: "50ms"}'),
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        secure_serving=False,
    )
    try:
        async with EppApp(settings) as app:
            for _ in range(200):
                if all(QUEUE in e.attributes for e in app.datastore.endpoints()):
                    break
                await asyncio.sleep(0.02)
            assert len(app.datastore) == 2
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
                call = pb_grpc.ExternalProcessorStub(channel).Process()
                await call.write(req_headers())
                await call.write(req_body(COMPLETION))
                reply = await asyncio.wait_for(call.read(), 10)
                destination = set_headers(reply)["x-gateway-destination-endpoint"]
                call.cancel()
        idle = f"127.0.0.1:{p1}" if idle_first else f"localhost:{p2}"
        assert destination.split(",")[0] == idle
    finally:
        await r1.cleanup()
        await r2.cleanup()


async def test_nan_or_inf_clears_the_attribute_and_stops_the_metrics(
    peer: tuple[Peer, int],
) -> None:
    server, port = peer
    source = build({"scheme": "http"})
    store = Datastore()
    store.upsert_endpoint("default/a", "127.0.0.1", port)
    source.attach(store)
    try:
        await source.poll_all()
        before = store.get("default/a")
        assert before is not None
        assert before.metrics.updated_at > 0
        server.page = page(float("nan"), float("inf"))  # a pool without ready pods
        await source.poll_all()
        after = store.get("default/a")
        assert after is not None
        assert dict(after.attributes) == {}
        assert after.metrics == before.metrics  # not refreshed: it goes stale (fails closed)
        assert source.stats.failures == 0
    finally:
        await source.aclose()
