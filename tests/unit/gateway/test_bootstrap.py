"""The generated Envoy bootstrap: shape per option, and Envoy itself accepts every variant."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvroute.gateway.bootstrap import (
    DESTINATION_HEADER,
    EPP_CLUSTER,
    FAILOPEN_CLUSTER,
    POOL_CLUSTER,
    TAP_HTTP_CLUSTER,
    BootstrapOptions,
    FailureMode,
    build_bootstrap,
)
from kvroute.gateway.edge import EdgeOptions
from kvroute.gateway.envoy import find_envoy
from kvroute.gateway.failopen import FailOpenRewrites

EPS = (("127.0.0.1", 8001), ("127.0.0.1", 8002))


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    cfg: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return cfg


def _clusters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def _ext_proc(doc: dict[str, Any]) -> dict[str, Any]:
    (f,) = [f for f in _hcm(doc)["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    cfg: dict[str, Any] = f["typed_config"]
    return cfg


VARIANTS = {
    "default": BootstrapOptions(endpoints=EPS),
    "failopen": BootstrapOptions(endpoints=EPS, failure_mode=FailureMode.FAIL_OPEN),
    "original-dst": BootstrapOptions(endpoints=EPS, upstream_lb="original_dst"),
    "original-dst-failopen": BootstrapOptions(
        endpoints=EPS, upstream_lb="original_dst", failure_mode=FailureMode.FAIL_OPEN
    ),
    "light": BootstrapOptions(endpoints=EPS, response_processing="light"),
    "plaintext-epp": BootstrapOptions(endpoints=EPS, epp_tls=False),
    "unix-sockets-trusting": BootstrapOptions(
        endpoints=EPS,
        epp_uds="/tmp/kvroute-validate/epp.sock",
        admin_uds="/tmp/kvroute-validate/admin.sock",
        edge=EdgeOptions(
            trust_client_routing_headers=True,
            strip_client_objective_header=True,
            extra_path_prefixes=("/v1/models",),
            first_byte_timeout_s=0,
            outlier_detection=False,
        ),
    ),
    "failopen-rewrites": BootstrapOptions(
        endpoints=EPS,
        failure_mode=FailureMode.FAIL_OPEN,
        failopen_rewrites=FailOpenRewrites(
            exact={"chat": (("chat-v1", 90), ("chat-v2", 10)), 'odd"\\name\né': (("x", 0),)},
            generic=(("fallback", 0),),
        ),
    ),
    "h2c-original-dst-failopen": BootstrapOptions(
        endpoints=EPS,
        upstream_h2c=True,
        upstream_lb="original_dst",
        failure_mode=FailureMode.FAIL_OPEN,
    ),
    "epp-replicas": BootstrapOptions(
        endpoints=EPS, epp_tls=False, epp_endpoints=(("127.0.0.1", 9102), ("127.0.0.1", 9202))
    ),
    # kvroute serve's default shape (issue 19): tap, private sockets, the HTTP report socket.
    "tap-http-report": BootstrapOptions(
        endpoints=EPS,
        epp_tls=False,
        response_processing="tap",
        epp_uds="/tmp/kvroute-validate/epp.sock",
        tap_http_uds="/tmp/kvroute-validate/epp.sock-tap",
    ),
}


def test_epp_replicas_share_one_ext_proc_cluster_with_fast_ejection() -> None:
    doc = build_bootstrap(VARIANTS["epp-replicas"])
    epp = _clusters(doc)[EPP_CLUSTER]
    hosts = epp["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts]
    assert ports == [9102, 9202]
    assert epp["lb_policy"] == "LEAST_REQUEST"
    assert epp["outlier_detection"]["consecutive_local_origin_failure"] == 1
    assert "outlier_detection" not in _clusters(build_bootstrap(VARIANTS["default"]))[EPP_CLUSTER]


def _grpc_service(doc: dict[str, Any]) -> dict[str, Any]:
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (ext_proc,) = [
        f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"
    ]
    grpc: dict[str, Any] = ext_proc["typed_config"]["grpc_service"]
    return grpc


def test_epp_replicas_retry_a_stream_that_cannot_open_on_another_replica() -> None:
    """The retry policy sits on GrpcService (Envoy's gRPC client honours it for filter streams),
    not on EnvoyGrpc (xDS only); the live kill test measures the effect."""
    grpc = _grpc_service(build_bootstrap(VARIANTS["epp-replicas"]))
    assert "retry_policy" not in grpc["envoy_grpc"]
    retry = grpc["retry_policy"]
    assert "connect-failure" in retry["retry_on"]
    assert "reset" in retry["retry_on"]
    assert retry["num_retries"] == 2  # one per replica
    assert "retry_policy" not in _grpc_service(build_bootstrap(VARIANTS["default"]))


def test_h2c_pool_speaks_http2_to_the_model_servers_and_http1_by_default() -> None:
    h2 = {"http2_protocol_options": {}}
    clusters = _clusters(build_bootstrap(VARIANTS["h2c-original-dst-failopen"]))
    for name in (POOL_CLUSTER, FAILOPEN_CLUSTER):
        opts = clusters[name]["typed_extension_protocol_options"]
        (proto,) = opts.values()
        assert proto["explicit_http_config"] == h2
    plain = _clusters(build_bootstrap(VARIANTS["default"]))[POOL_CLUSTER]
    assert "typed_extension_protocol_options" not in plain


@pytest.mark.parametrize("name", list(VARIANTS), ids=list(VARIANTS))
def test_envoy_validates_generated_config(name: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(build_bootstrap(VARIANTS[name])))
    proc = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_processing_mode_matches_upstream_in_full_mode() -> None:
    ep = _ext_proc(build_bootstrap(VARIANTS["default"]))
    assert ep["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "response_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    }
    assert ep["message_timeout"] == "1000s"
    # Envoy ignores mode_override under FULL_DUPLEX_STREAMED and the EPP never sends one, so
    # the option is not generated (light mode is a filter-config choice, tested below).
    assert "allow_mode_override" not in ep


def test_light_mode_skips_response_body_but_keeps_trailers() -> None:
    mode = _ext_proc(build_bootstrap(VARIANTS["light"]))["processing_mode"]
    assert mode["response_body_mode"] == "NONE"
    # Trailers SEND keeps Envoy's stream open to the end of the exchange (completion signal).
    assert mode["response_trailer_mode"] == "SEND"


@pytest.mark.parametrize(
    ("name", "allow", "fallback_cluster", "pool_type"),
    [
        ("default", False, None, "STATIC"),
        ("failopen", True, POOL_CLUSTER, "STATIC"),
        ("original-dst", False, None, "ORIGINAL_DST"),
        ("original-dst-failopen", True, FAILOPEN_CLUSTER, "ORIGINAL_DST"),
    ],
    ids=["failclose", "failopen", "original-dst-failclose", "original-dst-failopen"],
)
def test_failure_mode_routes(
    name: str, allow: bool, fallback_cluster: str | None, pool_type: str
) -> None:
    doc = build_bootstrap(VARIANTS[name])
    assert _ext_proc(doc)["failure_mode_allow"] is allow
    routes = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    picked, unpicked, *_ = routes
    assert picked["match"]["path"] == "/v1/completions"
    assert routes[-1]["direct_response"]["status"] == 404  # finding 1: nothing else passes
    assert picked["match"]["headers"][0]["name"] == DESTINATION_HEADER
    assert picked["route"]["cluster"] == POOL_CLUSTER
    if fallback_cluster is None:
        assert unpicked["direct_response"]["status"] == 503
    else:
        assert unpicked["route"]["cluster"] == fallback_cluster
    clusters = _clusters(doc)
    assert clusters[POOL_CLUSTER]["type"] == pool_type
    assert (FAILOPEN_CLUSTER in clusters) is (fallback_cluster == FAILOPEN_CLUSTER)


def test_client_cannot_choose_its_own_endpoint_nor_model() -> None:
    filters = _hcm(build_bootstrap(VARIANTS["default"]))["http_filters"]
    strip = filters[1]
    assert strip["name"] == "envoy.filters.http.header_mutation"
    assert filters[2]["name"] == "envoy.filters.http.ext_proc"  # stripped before the EPP
    removed = {m["remove"] for m in strip["typed_config"]["mutations"]["request_mutations"]}
    assert {DESTINATION_HEADER, "x-gateway-model-name-rewrite"} <= removed
    assert "x-gateway-inference-objective" not in removed  # client-settable, as upstream


def test_trusted_routing_headers_keep_only_the_destination_strip() -> None:
    doc = build_bootstrap(
        BootstrapOptions(endpoints=EPS, edge=EdgeOptions(trust_client_routing_headers=True))
    )
    strip = _hcm(doc)["http_filters"][1]["typed_config"]["mutations"]["request_mutations"]
    assert "x-gateway-model-name-rewrite" not in {m["remove"] for m in strip}
    assert {"remove": DESTINATION_HEADER} in strip


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_epp_cluster_speaks_http2_with_optional_tls(tls: bool) -> None:
    epp = _clusters(build_bootstrap(BootstrapOptions(endpoints=EPS, epp_tls=tls)))[EPP_CLUSTER]
    opts = epp["typed_extension_protocol_options"]
    assert "http2_protocol_options" in json.dumps(opts)
    assert ("transport_socket" in epp) is tls


def test_retries_only_before_the_first_response_byte() -> None:
    picked = _hcm(build_bootstrap(VARIANTS["default"]))["route_config"]["virtual_hosts"][0][
        "routes"
    ][0]
    retry = picked["route"]["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {
        "connect-failure",
        "refused-stream",
        "reset",
        "5xx",
    }
    assert retry["per_try_timeout"] == "300s"  # first-byte timeout (ignored once streaming)
    assert picked["route"]["timeout"] == "0s"  # no overall timeout: generations can be long


def test_epp_is_health_checked_without_panic_routing() -> None:
    # FailOpen is only deterministic if a dead EPP fails the stream before the body is sent.
    epp = _clusters(build_bootstrap(VARIANTS["failopen"]))[EPP_CLUSTER]
    (hc,) = epp["health_checks"]
    assert hc["grpc_health_check"]["service_name"] == "envoy.service.ext_proc.v3.ExternalProcessor"
    assert epp["common_lb_config"]["healthy_panic_threshold"]["value"] == 0.0
    no_hc = build_bootstrap(BootstrapOptions(endpoints=EPS, epp_health_check=False))
    assert "health_checks" not in _clusters(no_hc)[EPP_CLUSTER]


@pytest.mark.parametrize("name", ["default", "failopen"])
def test_retried_routes_can_buffer_what_the_epp_accepts(name: str) -> None:
    """Without it Envoy copies only 1 MiB for retries: a 2 MB body got 507 on the fallback."""
    opts = VARIANTS[name]
    routes = _hcm(build_bootstrap(opts))["route_config"]["virtual_hosts"][0]["routes"]
    retried = [r for r in routes if "retry_policy" in r.get("route", {})]
    n_paths = len(opts.edge.inference_paths)
    assert len(retried) == (2 * n_paths if name == "failopen" else n_paths)
    for r in retried:
        assert r["request_body_buffer_limit"] == opts.request_body_buffer_limit_bytes
    assert opts.request_body_buffer_limit_bytes == 64 << 20


def test_tracing_adds_envoy_opentelemetry_tracer_and_collector_cluster() -> None:
    from kvroute.gateway.bootstrap import OTLP_CLUSTER

    plain = build_bootstrap(BootstrapOptions())
    assert all(c["name"] != OTLP_CLUSTER for c in plain["static_resources"]["clusters"])
    doc = build_bootstrap(
        BootstrapOptions(tracing_collector=("127.0.0.1", 4317), tracing_sampling_percent=1.0)
    )
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    tracing = hcm["tracing"]
    assert tracing["random_sampling"] == {"value": 1.0}
    assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    grpc = tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]
    (otlp,) = [c for c in doc["static_resources"]["clusters"] if c["name"] == grpc["cluster_name"]]
    ep = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}


def test_issue20_edge_shape() -> None:
    """Findings 1, 2, 5, 6, 7 of issue 20 in the generated config (each also runs through a
    real Envoy in tests/integration/test_gateway_hardening.py)."""
    opts = BootstrapOptions(endpoints=EPS, epp_uds="/tmp/x/epp.sock", admin_uds="/tmp/x/admin.sock")
    doc = build_bootstrap(opts)
    hcm = _hcm(doc)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    not_found = routes[-1]
    assert not_found["match"] == {"prefix": "/"}
    per_route = not_found["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
    assert per_route["disabled"] is True  # the EPP never sees non-inference paths
    assert {r["match"].get("path") for r in routes[:-1]} == set(opts.edge.inference_paths)
    listener = doc["static_resources"]["listeners"][0]
    assert listener["enable_reuse_port"] is False
    assert hcm["http_filters"][0]["name"] == "envoy.filters.http.lua"  # 431 before ext_proc
    assert hcm["common_http_protocol_options"]["max_headers_count"] > opts.edge.max_request_headers
    assert _clusters(doc)[POOL_CLUSTER]["outlier_detection"]["consecutive_5xx"] == 3
    epp = _clusters(doc)[EPP_CLUSTER]
    address = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": "/tmp/x/epp.sock"}}
    assert doc["admin"]["address"] == {"pipe": {"path": "/tmp/x/admin.sock"}}


def test_extra_prefixes_and_bad_edge_options() -> None:
    from kvroute.errors import ConfigError

    doc = build_bootstrap(
        BootstrapOptions(endpoints=EPS, edge=EdgeOptions(extra_path_prefixes=("/v1/models",)))
    )
    matches = [r["match"] for r in _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]]
    assert {"prefix": "/v1/models"} in matches
    with pytest.raises(ConfigError, match="--expose-path-prefix"):
        EdgeOptions(extra_path_prefixes=("v1",))


def test_pool_app_protocol_decides_h2c(tmp_path: Path) -> None:
    from kvroute.gateway.gateway import pool_speaks_h2c
    from kvroute.settings import EppSettings

    pool = (
        "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\n"
        "metadata: {name: p}\nspec:\n  selector: {matchLabels: {app: x}}\n"
        "  targetPorts: [{number: 9000}]\n"
    )
    plain, h2c = tmp_path / "plain.yaml", tmp_path / "h2c.yaml"
    plain.write_text(pool)
    h2c.write_text(pool + "  appProtocol: kubernetes.io/h2c\n")
    assert pool_speaks_h2c(EppSettings(resources=(h2c,))) is True
    assert pool_speaks_h2c(EppSettings(resources=(plain,))) is False
    assert pool_speaks_h2c(EppSettings()) is False


def test_tap_report_socket_is_an_http1_cluster_the_lua_filter_posts_to() -> None:
    doc = build_bootstrap(VARIANTS["tap-http-report"])
    cluster = _clusters(doc)[TAP_HTTP_CLUSTER]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/tmp/kvroute-validate/epp.sock-tap"}}
    assert "typed_extension_protocol_options" not in cluster  # HTTP/1.1, not h2
    (lua,) = [f for f in _hcm(doc)["http_filters"] if f["name"] == "kvroute.response_tap"]
    source = lua["typed_config"]["default_source_code"]["inline_string"]
    assert f'local HTTP_CLUSTER = "{TAP_HTTP_CLUSTER}"' in source
    # Without the socket (TCP, TLS, replicas, --tap-report grpc): no such cluster, gRPC only.
    plain = build_bootstrap(BootstrapOptions(endpoints=EPS, response_processing="tap"))
    assert TAP_HTTP_CLUSTER not in _clusters(plain)
    (lua,) = [f for f in _hcm(plain)["http_filters"] if f["name"] == "kvroute.response_tap"]
    assert 'local HTTP_CLUSTER = ""' in lua["typed_config"]["default_source_code"]["inline_string"]
