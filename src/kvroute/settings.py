"""EPP options: upstream's flag names and defaults (``pkg/epp/server/options.go`` @v1.5.0).

One frozen :class:`EppSettings` built from argv (``kvroute epp`` and ``kvroute serve`` share
:func:`add_epp_arguments`) or directly in Python (tests, ``Gateway``). Validation that needs no
I/O happens here, so a bad flag fails before any socket is opened.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from kvroute.errors import ConfigError
from kvroute.extproc.body_budget import DEFAULT_MAX_BUFFERED_BODY_BYTES
from kvroute.extproc.stream import DEFAULT_MAX_REQUEST_BODY_BYTES, ResponseProcessing

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Go-style durations used by upstream flags: ``50ms``, ``2s``, ``1m``; bare numbers are s."""
    m = _DURATION.match(text)
    if m is None:
        raise ConfigError(f"invalid duration {text!r} (use e.g. 50ms, 2s, 1m)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def parse_endpoint_url(url: str) -> tuple[str, int]:
    """``http://10.0.0.1:8000`` or ``10.0.0.1:8000`` -> (host, port)."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname is None or parts.port is None:
        raise ConfigError(f"--endpoint {url!r}: expected http://HOST:PORT")
    return parts.hostname, parts.port


@dataclass(frozen=True, slots=True, kw_only=True)
class EppSettings:
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    # ext_proc on this Unix socket instead of --grpc-port (kvroute serve: Envoy's only way in;
    # issue 20 finding 7). The health port stays TCP.
    grpc_uds: Path | None = None
    metrics_port: int = 9090
    bind_host: str = "0.0.0.0"
    pool_name: str = ""
    pool_namespace: str = field(default_factory=lambda: os.environ.get("NAMESPACE", "default"))
    pool_group: str = "inference.networking.k8s.io"
    ha_enable_leader_election: bool = False
    config_file: Path | None = None
    config_text: str | None = None
    refresh_metrics_interval_s: float = 0.05
    refresh_prometheus_metrics_interval_s: float = 5.0
    metrics_staleness_threshold_s: float = 2.0
    secure_serving: bool = True
    cert_path: Path | None = None
    health_checking: bool = False
    endpoint_selector: str = ""
    endpoint_target_ports: tuple[int, ...] = ()
    endpoints: tuple[tuple[str, int], ...] = ()
    resources: tuple[Path, ...] = ()
    response_processing: ResponseProcessing = ResponseProcessing.FULL
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    max_buffered_body_bytes: int = DEFAULT_MAX_BUFFERED_BODY_BYTES
    # mTLS for ext_proc (issue 20 finding 7): a CA bundle the client certificate must chain to.
    require_client_cert: bool = False
    client_ca_path: Path | None = None
    # A static bearer token the metrics endpoint requires (``--metrics-endpoint-auth``).
    metrics_bearer_token: str | None = None

    def __post_init__(self) -> None:
        if self.config_file is not None and self.config_text is not None:
            raise ConfigError("--config-file and --config-text are mutually exclusive")
        if self.pool_name and self.endpoint_selector:
            raise ConfigError("--pool-name and --endpoint-selector are mutually exclusive")
        if len(self.endpoint_target_ports) > 8:
            raise ConfigError("--endpoint-target-ports takes 1 to 8 ports")
        if self.max_buffered_body_bytes <= 0:
            raise ConfigError(
                f"--max-buffered-body-bytes must be positive, got {self.max_buffered_body_bytes}"
            )
        if self.require_client_cert and (not self.secure_serving or self.client_ca_path is None):
            raise ConfigError(
                "--require-client-cert needs --secure-serving=true and --client-ca-path FILE"
            )
        if self.max_request_body_bytes <= 0:
            raise ConfigError(
                f"--max-request-body-bytes must be positive, got {self.max_request_body_bytes}"
            )

    @property
    def pool_label(self) -> str:
        """The ``name`` label of pool metrics."""
        return self.pool_name or "kvroute"


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "t", "yes", "y"):
        return True
    if low in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_epp_arguments(parser: argparse.ArgumentParser, *, gateway: bool = False) -> None:
    """Upstream's EPP flags plus kvroute's static ``--endpoint``/``--resources``.

    ``gateway`` (``kvroute serve``): the EPP runs beside Envoy on loopback, so TLS defaults to
    off there, and ports default to 0 (any free port) except ``--metrics-port``.
    """
    g = parser.add_argument_group("endpoint picker")
    g.add_argument("--grpc-port", type=int, default=0 if gateway else 9002)
    g.add_argument("--grpc-health-port", type=int, default=0 if gateway else 9003)
    g.add_argument("--metrics-port", type=int, default=9090)
    g.add_argument("--pool-name", default="", help="InferencePool to follow (Kubernetes)")
    g.add_argument("--pool-namespace", default=os.environ.get("NAMESPACE", "default"))
    g.add_argument(
        "--pool-group",
        default="inference.networking.k8s.io",
        help="API group of the InferencePool (inference.networking.x-k8s.io: legacy v1alpha2)",
    )
    g.add_argument(
        "--ha-enable-leader-election",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="active-passive HA: only the Lease holder reports ready (needs --pool-name)",
    )
    cfg = g.add_mutually_exclusive_group()
    cfg.add_argument("--config-file", type=Path, help="EndpointPickerConfig YAML file")
    cfg.add_argument("--config-text", help="EndpointPickerConfig YAML text")
    if gateway:
        cfg.add_argument("--config", dest="config_file", type=Path, help="alias of --config-file")
    g.add_argument("--refresh-metrics-interval", type=_duration_arg, default="50ms")
    g.add_argument("--refresh-prometheus-metrics-interval", type=_duration_arg, default="5s")
    g.add_argument("--metrics-staleness-threshold", type=_duration_arg, default="2s")
    g.add_argument(
        "--secure-serving",
        type=_bool,
        default=not gateway,
        metavar="BOOL",
        help="serve ext_proc over TLS (self-signed unless --cert-path)",
    )
    g.add_argument("--cert-path", type=Path, help="directory with tls.crt and tls.key")
    g.add_argument(
        "--health-checking",
        type=_bool,
        default=gateway,
        metavar="BOOL",
        help="also serve gRPC health on the ext_proc port (kvroute serve: on, Envoy checks it)",
    )
    g.add_argument("--endpoint-selector", default="", help="k=v,k2=v2 (standalone Kubernetes)")
    g.add_argument(
        "--endpoint-target-ports",
        default="",
        help="comma-separated ports for --endpoint-selector",
    )
    g.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="a model server (repeatable), e.g. http://127.0.0.1:8001; no Kubernetes needed",
    )
    g.add_argument(
        "--resources",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="InferencePool/InferenceModel/InferenceObjective YAML (repeatable)",
    )
    g.add_argument(
        "--response-processing",
        choices=[m.value for m in ResponseProcessing],
        default=ResponseProcessing.FULL.value,
        help="full: every response chunk through the EPP (upstream); light: response body "
        "skipped (no model-name restore, no usage metrics), much less EPP CPU",
    )
    g.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BODY_BYTES,
        metavar="N",
        help="larger request bodies are answered 413 (the EPP buffers each body whole); "
        f"default {DEFAULT_MAX_REQUEST_BODY_BYTES} (64 MiB)",
    )
    g.add_argument(
        "--max-buffered-body-bytes",
        type=int,
        default=DEFAULT_MAX_BUFFERED_BODY_BYTES,
        metavar="N",
        help="request body bytes all streams together may hold; past it a request gets 503 "
        f"(default {DEFAULT_MAX_BUFFERED_BODY_BYTES}, 256 MiB)",
    )
    g.add_argument(
        "--require-client-cert",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="mTLS: ext_proc clients must present a certificate signed by --client-ca-path",
    )
    g.add_argument("--client-ca-path", type=Path, help="CA bundle (PEM) for --require-client-cert")
    g.add_argument(
        "--metrics-endpoint-auth",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="require a bearer token on /metrics (upstream checks it with Kubernetes "
        "TokenReview; kvroute checks a static token: --metrics-bearer-token-file)",
    )
    g.add_argument(
        "--metrics-bearer-token-file",
        default="",
        metavar="FILE",
        help="the token /metrics requires ('Authorization: Bearer <token>'); env:NAME reads it "
        "from an environment variable; implies --metrics-endpoint-auth",
    )


def settings_from_args(args: argparse.Namespace, *, bind_host: str = "0.0.0.0") -> EppSettings:
    ports: Sequence[str] = [p for p in str(args.endpoint_target_ports).split(",") if p.strip()]
    try:
        target_ports = tuple(int(p) for p in ports)
    except ValueError as exc:
        raise ConfigError(f"--endpoint-target-ports: {exc}") from exc
    return EppSettings(
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        bind_host=bind_host,
        pool_name=args.pool_name,
        pool_namespace=args.pool_namespace,
        pool_group=args.pool_group,
        ha_enable_leader_election=args.ha_enable_leader_election,
        config_file=args.config_file,
        config_text=args.config_text,
        refresh_metrics_interval_s=args.refresh_metrics_interval,
        refresh_prometheus_metrics_interval_s=args.refresh_prometheus_metrics_interval,
        metrics_staleness_threshold_s=args.metrics_staleness_threshold,
        secure_serving=args.secure_serving,
        cert_path=args.cert_path,
        health_checking=args.health_checking,
        endpoint_selector=args.endpoint_selector,
        endpoint_target_ports=target_ports,
        endpoints=tuple(parse_endpoint_url(u) for u in args.endpoint),
        resources=tuple(args.resources),
        response_processing=ResponseProcessing(args.response_processing),
        max_request_body_bytes=args.max_request_body_bytes,
        max_buffered_body_bytes=args.max_buffered_body_bytes,
        require_client_cert=args.require_client_cert,
        client_ca_path=args.client_ca_path,
        metrics_bearer_token=_metrics_token(
            args.metrics_endpoint_auth, args.metrics_bearer_token_file
        ),
    )


def _metrics_token(auth: bool, source: str) -> str | None:
    """The static token of ``--metrics-bearer-token-file`` (a file, or ``env:NAME``)."""
    if not source:
        if auth:
            raise ConfigError(
                "--metrics-endpoint-auth: Kubernetes TokenReview is not implemented; "
                "give the token with --metrics-bearer-token-file"
            )
        return None
    if source.startswith("env:"):
        token = os.environ.get(source[4:], "")
    else:
        try:
            token = Path(source).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--metrics-bearer-token-file {source!r}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"--metrics-bearer-token-file {source!r}: the token is empty")
    return token
