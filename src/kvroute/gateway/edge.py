"""The gateway's edge policy (issue 20): what the generated Envoy lets through, and how.

:class:`EdgeOptions` holds ``kvroute serve``'s edge flags; the functions here build the pieces
of the bootstrap that enforce them (``kvroute.gateway.bootstrap`` assembles the whole):

* only the inference paths are routed; everything else is a JSON 404 from Envoy, with the
  ext_proc filter disabled on that route (finding 1);
* client-set routing headers are removed before ext_proc (finding 4);
* a Lua filter answers 431 for too many or too large request headers, ahead of the EPP, with
  Envoy's own codec limits set above it so the EPP's header mutations always fit (finding 6);
* outlier ejection on the pool cluster (finding 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvroute.errors import ConfigError
from kvroute.protocol.paths import INFERENCE_PATHS

DESTINATION_HEADER = "x-gateway-destination-endpoint"
SERVED_HEADER = "x-gateway-destination-endpoint-served"

_T = "type.googleapis.com/"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeOptions:
    """What passes the gateway's edge; ``kvroute serve``'s flags. See the module docstring."""

    # Finding 1: only these paths reach the EPP and the pool; everything else is a 404 answered
    # by Envoy (the EPP is not consulted). ``extra_path_prefixes`` (``--expose-path-prefix``)
    # are routed like the inference paths.
    inference_paths: tuple[str, ...] = INFERENCE_PATHS
    extra_path_prefixes: tuple[str, ...] = ()
    # Finding 4: control headers a client must not set in a gateway kvroute owns.
    trust_client_routing_headers: bool = False
    strip_client_objective_header: bool = False
    # Finding 6: the client may send this many headers / KiB of headers (431 past it).
    max_request_headers: int = 100
    max_request_headers_kb: int = 60
    # Finding 5: the time an endpoint may take to its first response byte (0: no limit; a
    # timeout is a 504, retried on another endpoint before the first byte), the stream idle
    # timeout (long generations with slow tokens), and Envoy's outlier ejection.
    first_byte_timeout_s: float = 300.0
    stream_idle_timeout_s: float = 3600.0
    outlier_detection: bool = True
    outlier_consecutive_5xx: int = 3
    outlier_base_ejection_s: float = 10.0

    def __post_init__(self) -> None:
        for p in self.extra_path_prefixes:
            if not p.startswith("/"):
                raise ConfigError(f"--expose-path-prefix {p!r}: a path prefix starts with /")
        if self.max_request_headers < 1 or not 1 <= self.max_request_headers_kb <= 2048:
            raise ConfigError(
                "--max-request-headers must be >= 1, --max-request-headers-kb 1..2048"
            )
        if self.first_byte_timeout_s < 0 or self.stream_idle_timeout_s < 0:
            raise ConfigError("--first-byte-timeout/--stream-idle-timeout must not be negative")


# Finding 4 (issue 20): headers that change where a request goes or which model serves it. In a
# gateway kvroute owns they are the operator's, never the client's: removed before ext_proc sees
# the request. The destination headers go always (a client must not pick its own upstream, also
# not when FailOpen lets requests through unprocessed); the model rewrite headers unless the
# operator trusts clients (``--trust-client-routing-headers``).
DESTINATION_HEADERS = (
    DESTINATION_HEADER,
    DESTINATION_HEADER + "-subset",
    SERVED_HEADER,
)
ROUTING_HEADERS = ("x-gateway-model-name-rewrite", "x-llm-d-model-name-rewrite")
OBJECTIVE_HEADERS = ("x-gateway-inference-objective", "x-llm-d-inference-objective")


def stripped_request_headers(edge: EdgeOptions) -> tuple[str, ...]:
    """The client request headers the generated config removes before ext_proc."""
    names = list(DESTINATION_HEADERS)
    if not edge.trust_client_routing_headers:
        names += ROUTING_HEADERS
    if edge.strip_client_objective_header:
        names += OBJECTIVE_HEADERS
    return tuple(names)


def strip_client_headers_filter(edge: EdgeOptions) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [{"remove": h} for h in stripped_request_headers(edge)]
            },
        },
    }


# Finding 6: Envoy checks the header count after the EPP's mutation (destination, content-length,
# x-request-id) against the same limit its codec applies to the client, so a client just under
# the limit got an empty 503; and past its codec limits Envoy's HTTP/1 codec closes the
# connection without a status. The client limit is therefore enforced by a small Lua filter
# first (431 with a JSON body), and Envoy's own codec limits sit this factor above it: requests
# up to that many headers/bytes get the 431, beyond it Envoy closes the connection (verified with
# Envoy 1.40).
CODEC_LIMIT_FACTOR = 4

_HEADER_LIMIT_LUA = """
function envoy_on_request(handle)
  local n = 0
  local size = 0
  for key, value in pairs(handle:headers()) do
    if string.sub(key, 1, 1) ~= ":" then
      n = n + 1
      size = size + #key + #value
    end
  end
  if n > %(count)d or size > %(bytes)d then
    handle:respond({[":status"] = "431", ["content-type"] = "application/json"},
      '{"error":{"type":"request_header_fields_too_large","code":431,"message":'
      .. '"request headers over the gateway limit of %(count)d headers / %(kb)d KiB"}}')
  end
end
"""


def header_limit_filter(edge: EdgeOptions) -> dict[str, Any]:
    code = _HEADER_LIMIT_LUA % {
        # Envoy adds x-forwarded-proto and x-request-id before the filters run.
        "count": edge.max_request_headers + 2,
        "bytes": edge.max_request_headers_kb * 1024,
        "kb": edge.max_request_headers_kb,
    }
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }


def not_found_route() -> dict[str, Any]:
    """Every path that is not an inference API: 404 from Envoy, the EPP is not asked."""
    body = (
        '{"error":{"type":"not_found","code":404,"message":"kvroute gateway: only inference '
        "APIs are routed (" + ", ".join(INFERENCE_PATHS) + ')"}}'
    )
    return {
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": {
            "envoy.filters.http.ext_proc": {
                "@type": _T + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            }
        },
    }


def path_matches(edge: EdgeOptions) -> list[dict[str, Any]]:
    exact = [{"path": p} for p in edge.inference_paths]
    return exact + [{"prefix": p} for p in edge.extra_path_prefixes]


def outlier_detection(edge: EdgeOptions) -> dict[str, Any]:
    """Finding 5: an endpoint that keeps failing is ejected for a while (passive health).

    Consecutive 5xx answers and local failures (connect failure, reset, first-byte timeout,
    which Envoy counts as 5xx unless ``split_external_local_origin_errors``) eject the host.
    What ejection does and does not do (Envoy 1.40, read in its source and verified): the
    ``override_host`` policy does *not* check host health, so an endpoint the EPP names is used
    even while ejected; ejection steers the fallback round robin (FailOpen, and retries past the
    EPP's list). Steering away from a failing endpoint the EPP picked is therefore the EPP's job
    (``kvroute.datastore.health``); with ``upstream_lb="original_dst"`` the host comes from the
    header alone and ejection has no effect either. At most half the pool is ejected at once
    (at least one host, Envoy's rule), so a pool-wide fault still reaches some server.
    """
    return {
        "consecutive_5xx": edge.outlier_consecutive_5xx,
        "consecutive_gateway_failure": edge.outlier_consecutive_5xx,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "1s",
        "base_ejection_time": _duration(edge.outlier_base_ejection_s),
        "max_ejection_time": _duration(edge.outlier_base_ejection_s * 6),
        "max_ejection_percent": 50,
        # Success-rate and failure-percentage ejection need request volume a small pool may not
        # have; consecutive errors are the signal that works from the first requests.
        "enforcing_success_rate": 0,
    }


def codec_limits(edge: EdgeOptions) -> dict[str, Any]:
    """The HTTP connection manager's own header limits, ``CODEC_LIMIT_FACTOR`` above the edge's."""
    return {
        "max_request_headers_kb": min(8192, edge.max_request_headers_kb * CODEC_LIMIT_FACTOR),
        "common_http_protocol_options": {
            "max_headers_count": edge.max_request_headers * CODEC_LIMIT_FACTOR
        },
    }
