"""The Envoy bootstrap kvroute generates for ``kvroute serve`` (pure: options in, dict out).

Shape follows the upstream reference config (``test/testdata/envoy.yaml`` @v1.5.0, see
``gie-epp.md`` §2.1): the ext_proc filter in FULL_DUPLEX_STREAMED mode for both bodies, an
ORIGINAL_DST cluster that follows ``x-gateway-destination-endpoint``, ``message_timeout`` long
enough for long generations. No ``allow_mode_override``: Envoy ignores a per-request
``mode_override`` under FULL_DUPLEX_STREAMED (docs/benchmarks.md), so ``light`` and ``tap``
response processing are chosen in this filter config instead, and the EPP never sends one
(``tap`` adds the Lua response tap of ``kvroute.gateway.response_tap`` and, with several EPP
replicas, one report cluster per replica). kvroute adds:

* the edge policy of ``kvroute.gateway.edge`` (issue 20): only inference paths routed (404
  otherwise), a ``header_mutation`` filter *before* ext_proc that drops client-supplied
  destination and routing headers (a client must not pick its own upstream, also not when the
  EPP is down and FailOpen lets requests through unprocessed), header limits answered 431,
  outlier ejection, a first-byte timeout;
* two routes: requests that carry the destination header (set by the EPP) go to the
  ORIGINAL_DST cluster; the rest (EPP unreachable) go to a round-robin cluster of all endpoints
  under FailOpen, or get a 503 under FailClose; under FailOpen a Lua filter after ext_proc
  applies the EPP's startup model-rewrite table to those (``kvroute.gateway.failopen``);
* ``x-gateway-destination-endpoint-served`` added to the response (the upstream address that
  served it), which the EPP reads back on the response path;
* a retry policy for connect failures and resets before the first response byte (Envoy's
  ``reset`` retry condition: no response headers at all; once headers are out, nothing is
  retried, so a streamed generation is never duplicated after it started). A retry resends
  the body, so Envoy keeps a copy of it, by default only up to the 1 MiB connection buffer
  limit: a larger body whose first endpoint was dead got ``507 exceeded request buffer limit
  while retrying upstream`` instead of the fallback (verified with Envoy 1.40). The routes
  therefore set ``request_body_buffer_limit`` to the EPP's own body limit
  (``--max-request-body-bytes``): whatever the EPP accepts can also be retried.

The fallback list. Envoy's ORIGINAL_DST load balancer (upstream's reference shape) takes
exactly one ``host:port`` from the header: a comma list is rejected ("invalid override header
value") and the request fails with 503 (verified with Envoy 1.40). kvroute therefore defaults to
a STATIC cluster of the known endpoints with Envoy's ``override_host`` load balancer, which
reads the comma list (header or ``envoy.lb`` metadata) and moves to the next entry on each
retry; with no list at all it falls back to round robin, which is also what FailOpen needs.
``upstream_lb="original_dst"`` keeps upstream's shape (single endpoint only).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvroute.extproc.tap import TAP_CLUSTER_PREFIX, TAP_NAMESPACE
from kvroute.gateway.edge import (
    DESTINATION_HEADER,
    SERVED_HEADER,
    EdgeOptions,
    codec_limits,
    header_limit_filter,
    not_found_route,
    outlier_detection,
    path_matches,
    strip_client_headers_filter,
)
from kvroute.gateway.failopen import FailOpenRewrites, failopen_rewrite_filter
from kvroute.gateway.request_lua import (
    disconnect_access_log,
    request_lua_filter,
    request_lua_per_route_disabled,
    route_cluster,
)
from kvroute.gateway.response_tap import response_tap_filter

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
POOL_CLUSTER = "kvroute_pool"
FAILOPEN_CLUSTER = "kvroute_failopen"
EPP_CLUSTER = "kvroute_epp"
TAP_HTTP_CLUSTER = "kvroute_epp_tap_http"

_T = "type.googleapis.com/"


class FailureMode(enum.StrEnum):
    """InferencePool ``endpointPickerRef.failureMode``."""

    FAIL_OPEN = "FailOpen"
    FAIL_CLOSE = "FailClose"


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapOptions:
    listen_host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 0
    epp_host: str = "127.0.0.1"
    epp_port: int = 9002
    # Active-active EPP replicas (``kvroute serve --epp-replicas N``): the ext_proc cluster's
    # hosts, balanced per stream; empty = the one (epp_host, epp_port).
    epp_endpoints: Sequence[tuple[str, int]] = field(default_factory=tuple)
    epp_tls: bool = True
    # Finding 7 (issue 20): Envoy reaches the EPP over this Unix socket (``kvroute serve``: in a
    # private 0700 directory), and serves its admin API on ``admin_uds``, instead of loopback
    # TCP ports any local process can use.
    epp_uds: str | None = None
    admin_uds: str | None = None
    # tap: the EPP's HTTP/1.1 report socket (``EppApp.tap_http_socket``; issue 19): the Lua
    # filter reports there instead of over gRPC, unless the metadata names a replica's cluster.
    tap_http_uds: str | None = None
    # ``--transport lua`` (issue 19): no ext_proc filter; the Lua filter of
    # ``kvroute.gateway.request_lua`` asks the EPP's route socket (``tap`` responses only).
    route_uds: str | None = None
    # lua: the EPP's FIFO for exchanges that ended without a report (client disconnects).
    ended_fifo: str | None = None
    endpoints: Sequence[tuple[str, int]] = field(default_factory=tuple)  # for FailOpen
    failure_mode: FailureMode = FailureMode.FAIL_CLOSE
    # FailOpen: the EPP's model rewrites, applied by Envoy to requests the EPP did not route
    # (kvroute.gateway.failopen).
    failopen_rewrites: FailOpenRewrites = field(default_factory=FailOpenRewrites)
    connect_timeout_s: float = 2.0
    grpc_timeout_s: float = 10.0
    message_timeout_s: float = 1000.0
    retries: int = 2
    # Per-request body copy kept for retries; kvroute serve passes --max-request-body-bytes.
    request_body_buffer_limit_bytes: int = 64 * 1024 * 1024
    # gRPC health checks of the EPP (upstream's reference config does the same). Besides taking
    # a dead EPP out quickly, they make FailOpen deterministic: with FULL_DUPLEX_STREAMED, Envoy
    # honours failure_mode_allow only if the ext_proc stream fails before the request body was
    # handed to it; a connect attempt to a dead EPP races with that, a host already marked
    # unhealthy fails at once (verified with Envoy 1.40). The EPP must serve gRPC health on the
    # ext_proc port (``--health-checking``).
    epp_health_check: bool = True
    epp_health_interval_s: float = 1.0
    access_log_path: str | None = None
    # "full": upstream's FULL_DUPLEX_STREAMED response body; "light": response body not sent to
    # the EPP at all; "tap": as light, plus the Lua response tap (Envoy ignores
    # ``mode_override`` when a FULL_DUPLEX_STREAMED body mode is configured, so the choice has
    # to be made in the filter config).
    response_processing: str = "full"
    # "override_host": a STATIC cluster of the known endpoints with Envoy's override_host load
    # balancer, which reads the comma list and walks it on retries (needs the endpoint set up
    # front, as ``kvroute serve --endpoint`` has it). "original_dst": upstream's reference
    # shape; Envoy's ORIGINAL_DST rejects a comma list, so it only works with one endpoint.
    upstream_lb: str = "override_host"
    # OpenTelemetry: Envoy's tracer exports the gateway's spans to this OTLP/gRPC collector
    # (host, port); None = no tracing. See :func:`_add_tracing`.
    tracing_collector: tuple[str, int] | None = None
    tracing_sampling_percent: float = 100.0
    # What passes the edge (issue 20): paths, client headers, header limits, timeouts, outlier
    # ejection; ``kvroute serve``'s flags.
    edge: EdgeOptions = field(default_factory=EdgeOptions)
    # The pool's ``appProtocol: kubernetes.io/h2c``: Envoy speaks HTTP/2 cleartext to the model
    # servers (gRPC APIs: ``vllmgrpc-parser``, ``vertexai-parser``); else HTTP/1.1.
    upstream_h2c: bool = False


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _static_cluster(name: str, hosts: Sequence[tuple[str, int]], timeout: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(h, p)}} for h, p in hosts]}
            ],
        },
    }


def ext_proc_filter(opts: BootstrapOptions) -> dict[str, Any]:
    """The ext_proc HTTP filter, processing mode as upstream's reference config."""
    full = opts.response_processing == "full"
    namespaces = ["envoy.lb"]
    if opts.response_processing == "tap":
        namespaces.append(TAP_NAMESPACE)
    envoy_grpc: dict[str, Any] = {"cluster_name": EPP_CLUSTER, "authority": "kvroute-epp"}
    grpc_service: dict[str, Any] = {
        "envoy_grpc": envoy_grpc,
        "timeout": _duration(opts.grpc_timeout_s),
    }
    if len(opts.epp_endpoints) > 1:
        grpc_service["retry_policy"] = _epp_retry_policy(len(opts.epp_endpoints))
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": grpc_service,
            "processing_mode": {
                "request_header_mode": "SEND",
                # tap: the Lua filter reports status, content type and served endpoint and
                # adds the EPP's response headers itself (one message pair less per request).
                "response_header_mode": "SKIP" if opts.response_processing == "tap" else "SEND",
                "request_body_mode": "FULL_DUPLEX_STREAMED",
                "response_body_mode": "FULL_DUPLEX_STREAMED" if full else "NONE",
                "request_trailer_mode": "SEND",
                "response_trailer_mode": "SEND",
            },
            "message_timeout": _duration(opts.message_timeout_s),
            "failure_mode_allow": opts.failure_mode is FailureMode.FAIL_OPEN,
            "status_on_error": {"code": 503},
            "metadata_options": {"receiving_namespaces": {"untyped": namespaces}},
        },
    }


def _epp_retry_policy(replicas: int) -> dict[str, Any]:
    """Several EPP replicas: an ext_proc stream that cannot be opened on one (it just died and
    Envoy has not ejected it yet) is opened on another instead of failing the request.

    It sits on ``GrpcService.retry_policy``, which Envoy's own gRPC client honours for filter
    streams; ``EnvoyGrpc.retry_policy`` is for xDS streams only (measured with Envoy 1.40, one
    live and one dead replica, no health check or ejection: 17 of 40 requests failed with it
    there, as with none; 0-3 of 100 here). Retries happen only before the replica's first answer
    (Envoy never retries a stream whose response started), so a routed request is never
    routed twice. ``replicas`` retries: the host predicate does not always keep a retry off the
    host just tried, and ejection takes the dead one out between tries. Host selection is
    retried up to 10 times per retry (3 before): that test lost one request in 40 once in a
    full-suite run on a loaded box, though 400 requests in a row passed on a quieter one with
    either value; under LEAST_REQUEST each pick between two equal hosts is a coin toss, so three
    picks of the dead replica in a row are not rare enough, ten are.
    """
    return {
        "retry_on": "connect-failure,refused-stream,unavailable,reset",
        "num_retries": replicas,
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _T
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 10,
    }


def _retry_policy(opts: BootstrapOptions) -> dict[str, Any]:
    # Only before the first response byte: Envoy never retries once headers went downstream, so
    # a started generation is never duplicated. 5xx (the server answered an error, or a
    # per-try/first-byte timeout) moves the request to the next endpoint (finding 5).
    retry: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,reset,5xx",
        "num_retries": opts.retries,
        # A retry goes to a host not tried yet (the override list's next entry, else the
        # fallback policy's pick among the others).
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _T
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    if opts.edge.first_byte_timeout_s > 0:
        # Envoy ignores the per-try timeout once the downstream response has started, so with a
        # route timeout of 0 this is a first-byte timeout (504 "upstream request timeout").
        retry["per_try_timeout"] = _duration(opts.edge.first_byte_timeout_s)
    return retry


def _routes(opts: BootstrapOptions) -> list[dict[str, Any]]:
    retry = _retry_policy(opts)
    served = [
        {
            "header": {"key": SERVED_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    buffer_limit = opts.request_body_buffer_limit_bytes
    routes: list[dict[str, Any]] = []
    for match in path_matches(opts.edge):
        picked = {
            "match": {**match, "headers": [{"name": DESTINATION_HEADER, "present_match": True}]},
            "route": {"cluster": POOL_CLUSTER, "timeout": "0s", "retry_policy": retry},
            "request_body_buffer_limit": buffer_limit,
            "response_headers_to_add": served,
        }
        if opts.failure_mode is FailureMode.FAIL_OPEN and opts.endpoints:
            cluster = FAILOPEN_CLUSTER if _needs_failopen_cluster(opts) else POOL_CLUSTER
            unpicked: dict[str, Any] = {
                "match": dict(match),
                "route": {"cluster": cluster, "timeout": "0s", "retry_policy": retry},
                "request_body_buffer_limit": buffer_limit,
                "response_headers_to_add": served,
            }
        else:
            unpicked = {
                "match": dict(match),
                # lua: the body is buffered on this route, before the EPP's answer picks one
                **({"request_body_buffer_limit": buffer_limit} if opts.route_uds else {}),
                "direct_response": {
                    "status": 503,
                    "body": {
                        "inline_string": "inference error: ServiceUnavailable - no endpoint picked"
                    },
                },
            }
        routes += [picked, unpicked]
    routes.append(not_found_route())
    if opts.route_uds:  # lua: the EPP is not asked about a 404 either
        routes[-1]["typed_per_filter_config"].update(request_lua_per_route_disabled())
    return routes


_UNLIMITED = {
    "thresholds": [
        {
            "max_connections": 1_000_000,
            "max_pending_requests": 1_000_000,
            "max_requests": 1_000_000,
            "max_retries": 1_000_000,
        }
    ]
}


def _needs_failopen_cluster(opts: BootstrapOptions) -> bool:
    # override_host falls back to round robin by itself when no destination was set.
    return (
        opts.failure_mode is FailureMode.FAIL_OPEN
        and bool(opts.endpoints)
        and opts.upstream_lb != "override_host"
    )


def _pool_cluster(opts: BootstrapOptions, timeout: str) -> dict[str, Any]:
    if opts.upstream_lb == "override_host" and opts.endpoints:
        cluster = _static_cluster(POOL_CLUSTER, opts.endpoints, timeout)
        del cluster["lb_policy"]
        cluster["load_balancing_policy"] = {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": {
                            "@type": _T
                            + "envoy.extensions.load_balancing_policies.override_host.v3."
                            "OverrideHost",
                            "override_host_sources": [
                                {"header": DESTINATION_HEADER},
                                {
                                    "metadata": {
                                        "key": "envoy.lb",
                                        "path": [{"key": DESTINATION_HEADER}],
                                    }
                                },
                            ],
                            "fallback_policy": {
                                "policies": [
                                    {
                                        "typed_extension_config": {
                                            "name": "envoy.load_balancing_policies.round_robin",
                                            "typed_config": {
                                                "@type": _T
                                                + "envoy.extensions.load_balancing_policies."
                                                "round_robin.v3.RoundRobin"
                                            },
                                        }
                                    }
                                ]
                            },
                        },
                    }
                }
            ]
        }
    else:
        cluster = {
            "name": POOL_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": timeout,
            "original_dst_lb_config": {
                "use_http_header": True,
                "http_header_name": DESTINATION_HEADER,
            },
        }
    cluster["circuit_breakers"] = _UNLIMITED
    if opts.upstream_h2c:
        _set_h2c(cluster)
    if opts.edge.outlier_detection:
        cluster["outlier_detection"] = outlier_detection(opts.edge)
    return cluster


def _set_h2c(cluster: dict[str, Any]) -> None:
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def build_bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    """The complete Envoy bootstrap for one gateway listener in front of one EPP."""
    hcm: dict[str, Any] = {
        "@type": _T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "kvroute",
        "codec_type": "AUTO",
        "stream_idle_timeout": _duration(opts.edge.stream_idle_timeout_s),
        "request_timeout": "0s",
        **codec_limits(opts.edge),
        "route_config": {
            "name": "kvroute",
            "virtual_hosts": [{"name": "pool", "domains": ["*"], "routes": _routes(opts)}],
        },
        "http_filters": [
            header_limit_filter(opts.edge),
            strip_client_headers_filter(opts.edge),
            # Before ext_proc: encoding runs the list backwards, so the tap sees the response
            # after ext_proc let its headers go (see kvroute.gateway.response_tap).
            *(
                [response_tap_filter(EPP_CLUSTER, TAP_HTTP_CLUSTER if opts.tap_http_uds else "")]
                if opts.response_processing == "tap"
                else []
            ),
            request_lua_filter(fail_open=opts.failure_mode is FailureMode.FAIL_OPEN)
            if opts.route_uds
            else ext_proc_filter(opts),
            *_failopen_filters(opts),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    if opts.access_log_path:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": opts.access_log_path,
                },
            }
        ]
    if opts.ended_fifo:
        hcm.setdefault("access_log", []).append(disconnect_access_log(opts.ended_fifo))
    timeout = _duration(opts.connect_timeout_s)
    epp_hosts = list(opts.epp_endpoints) or [(opts.epp_host, opts.epp_port)]
    epp = _static_cluster(EPP_CLUSTER, epp_hosts, timeout)
    if len(epp_hosts) > 1:
        epp["lb_policy"] = "LEAST_REQUEST"  # streams to the replica with the fewest open
        # A replica that refuses a connection is ejected at once, not at the next health check.
        epp["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "0.1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        }
    if opts.epp_uds and len(epp_hosts) == 1:
        lb = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        lb["address"] = {"pipe": {"path": opts.epp_uds}}
    epp["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    if opts.epp_tls:
        # The EPP's certificate is self-signed by default (as upstream); Envoy encrypts but does
        # not verify it, which is what the upstream reference config does too.
        epp["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {"alpn_protocols": ["h2"]},
            },
        }
    if opts.epp_health_check:
        epp["health_checks"] = [
            {
                "timeout": _duration(min(1.0, opts.epp_health_interval_s)),
                "interval": _duration(opts.epp_health_interval_s),
                "no_traffic_interval": _duration(opts.epp_health_interval_s),
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": EXT_PROC_SERVICE},
            }
        ]
        # No panic routing: with every EPP host unhealthy, fail the stream at once.
        epp["common_lb_config"] = {"healthy_panic_threshold": {"value": 0.0}}
    clusters = [_pool_cluster(opts, timeout), epp]
    if opts.response_processing == "tap" and not (opts.epp_uds and len(epp_hosts) == 1):
        clusters += _tap_clusters(epp, epp_hosts)
    if opts.response_processing == "tap" and opts.tap_http_uds:
        # HTTP/1.1 (Envoy's default for a cluster), keep-alive, over the private socket.
        tap_http = _static_cluster(TAP_HTTP_CLUSTER, [("127.0.0.1", 0)], timeout)
        lb = tap_http["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        lb["address"] = {"pipe": {"path": opts.tap_http_uds}}
        tap_http["circuit_breakers"] = _UNLIMITED
        clusters.append(tap_http)
    if opts.route_uds:
        clusters.append(route_cluster(opts.route_uds, timeout))
    if _needs_failopen_cluster(opts):
        clusters.append(_static_cluster(FAILOPEN_CLUSTER, opts.endpoints, timeout))
        if opts.upstream_h2c:
            _set_h2c(clusters[-1])
    if opts.tracing_collector is not None:
        _add_tracing(opts, hcm, clusters)
    return {
        "admin": {
            "address": {"pipe": {"path": opts.admin_uds}}
            if opts.admin_uds
            else _address("127.0.0.1", opts.admin_port)
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "kvroute",
                    "address": _address(opts.listen_host, opts.port),
                    # Finding 2: a second process must not silently share the port.
                    "enable_reuse_port": False,
                    # lua: the Lua filter's body() is bounded by the connection's buffer limit
                    # (1 MiB by default; the route's limit does not apply before routing).
                    **(
                        {"per_connection_buffer_limit_bytes": opts.request_body_buffer_limit_bytes}
                        if opts.route_uds
                        else {}
                    ),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _failopen_filters(opts: BootstrapOptions) -> list[dict[str, Any]]:
    if opts.failure_mode is FailureMode.FAIL_OPEN and opts.failopen_rewrites:
        return [failopen_rewrite_filter(opts.failopen_rewrites)]
    return []


def _tap_clusters(epp: dict[str, Any], hosts: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """One cluster per EPP replica, ``kvroute_epp_tap_<port>``: the response tap's report must
    reach the replica that holds the request's ext_proc stream (the EPP names it)."""
    out = []
    for host, port in hosts:
        name = f"{TAP_CLUSTER_PREFIX}{port}"
        cluster = _static_cluster(name, [(host, port)], epp["connect_timeout"])
        for key in ("typed_extension_protocol_options", "transport_socket"):
            if key in epp:
                cluster[key] = epp[key]
        out.append(cluster)
    return out


OTLP_CLUSTER = "kvroute_otlp"


def _add_tracing(opts: BootstrapOptions, hcm: dict[str, Any], clusters: list[Any]) -> None:
    """Envoy's OpenTelemetry tracer: one span per request (the gateway's), exported over OTLP/gRPC.

    Envoy continues an incoming ``traceparent`` (or starts a trace, sampled at
    ``tracing_sampling_percent``), passes its context to the EPP in the ext_proc call's gRPC
    metadata and to the model server in the forwarded request's ``traceparent``, so the EPP's
    and the server's spans join the same trace.
    """
    assert opts.tracing_collector is not None
    host, port = opts.tracing_collector
    hcm["tracing"] = {
        "random_sampling": {"value": opts.tracing_sampling_percent},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "2s"},
                "service_name": "kvroute-gateway",
            },
        },
    }
    otlp = _static_cluster(OTLP_CLUSTER, [(host, port)], _duration(opts.connect_timeout_s))
    otlp["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    clusters.append(otlp)
