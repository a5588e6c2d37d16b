"""EPP options: upstream's flag names and defaults (``pkg/epp/server/options.go`` @v1.5.0).

One frozen :class:`EppSettings` built from argv (``kvroute epp`` and ``kvroute serve`` share
:func:`add_epp_arguments`) or directly in Python (tests, ``Gateway``). Validation that needs no
I/O happens here, so a bad flag fails before any socket is opened.

Every option is declared once, as a field of :class:`EppSettings`: its type and default
(``default_factory=from_env(...)`` where an environment variable sets it) and, in
``metadata=flag(...)``, its flag name, help text, parser and ``kvroute serve`` default.
:func:`add_epp_arguments` and :func:`settings_from_args` are generated from that one table, so
the CLI, the environment and the Python constructor cannot drift. Adding an option is one
field, e.g.::

    drain_timeout_s: float = field(
        default=30.0, metadata=flag("--drain-timeout", parse=duration, help="...")
    )

A plain dataclass rather than pydantic-settings: the options are argv flags (upstream has no
env or file form for them, beside ``NAMESPACE``), so a settings framework would add a
dependency and a second source of truth for argparse, which still has to produce ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvroute.config.extproc_options import (
    DEFAULT_MAX_BUFFERED_BODY_BYTES,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    ResponseProcessing,
)
from kvroute.config.flags import (
    FLAG_KEY,
    UNSET,
    Flag,
    duration,
    endpoint_ports,
    flag,
    from_env,
    parse_bool,
    parse_endpoint_url,
)
from kvroute.errors import ConfigError

__all__ = [
    "EppSettings",
    "Flag",
    "add_epp_arguments",
    "duration",
    "flag",
    "flags",
    "from_env",
    "parse_bool",
    "parse_endpoint_url",
    "settings_from_args",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class EppSettings:
    grpc_port: int = field(default=9002, metadata=flag("--grpc-port", parse=int, gateway_default=0))
    grpc_health_port: int = field(
        default=9003, metadata=flag("--grpc-health-port", parse=int, gateway_default=0)
    )
    metrics_port: int = field(default=9090, metadata=flag("--metrics-port", parse=int))
    bind_host: str = "0.0.0.0"  # not a flag: ``kvroute epp --bind``; ``kvroute serve``: loopback
    pool_name: str = field(
        default="", metadata=flag("--pool-name", help="InferencePool to follow (Kubernetes)")
    )
    pool_namespace: str = field(
        default_factory=from_env("NAMESPACE", "default"), metadata=flag("--pool-namespace")
    )
    pool_group: str = field(
        default="inference.networking.k8s.io",
        metadata=flag(
            "--pool-group",
            help="API group of the InferencePool (inference.networking.x-k8s.io: legacy v1alpha2)",
        ),
    )
    ha_enable_leader_election: bool = field(
        default=False,
        metadata=flag(
            "--ha-enable-leader-election",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="active-passive HA: only the Lease holder reports ready (needs --pool-name)",
        ),
    )
    config_file: Path | None = field(
        default=None,
        metadata=flag(
            "--config-file",
            parse=Path,
            exclusive="config",
            gateway_aliases=("--config",),
            help="EndpointPickerConfig YAML file",
        ),
    )
    config_text: str | None = field(
        default=None,
        metadata=flag("--config-text", exclusive="config", help="EndpointPickerConfig YAML text"),
    )
    refresh_metrics_interval_s: float = field(
        default=0.05,
        metadata=flag("--refresh-metrics-interval", parse=duration, flag_default="50ms"),
    )
    refresh_prometheus_metrics_interval_s: float = field(
        default=5.0,
        metadata=flag("--refresh-prometheus-metrics-interval", parse=duration, flag_default="5s"),
    )
    metrics_staleness_threshold_s: float = field(
        default=2.0,
        metadata=flag("--metrics-staleness-threshold", parse=duration, flag_default="2s"),
    )
    fairness_id_metric_label_limit: int = field(
        default=1000,
        metadata=flag(
            "--fairness-id-metric-label-limit",
            parse=int,
            help="distinct fairness IDs that get their own metric label; later ones read "
            "'other' (0: every ID but default-flow does)",
        ),
    )
    secure_serving: bool = field(
        default=True,
        metadata=flag(
            "--secure-serving",
            parse=parse_bool,
            gateway_default=False,
            metavar="BOOL",
            help="serve ext_proc over TLS (self-signed unless --cert-path)",
        ),
    )
    cert_path: Path | None = field(
        default=None,
        metadata=flag("--cert-path", parse=Path, help="directory with tls.crt and tls.key"),
    )
    health_checking: bool = field(
        default=False,
        metadata=flag(
            "--health-checking",
            parse=parse_bool,
            gateway_default=True,
            metavar="BOOL",
            help="also serve gRPC health on the ext_proc port (kvroute serve: on, Envoy checks it)",
        ),
    )
    endpoint_selector: str = field(
        default="",
        metadata=flag("--endpoint-selector", help="k=v,k2=v2 (standalone Kubernetes)"),
    )
    endpoint_target_ports: tuple[int, ...] = field(
        default=(),
        metadata=flag(
            "--endpoint-target-ports",
            convert=endpoint_ports,
            flag_default="",
            help="comma-separated ports for --endpoint-selector",
        ),
    )
    endpoints: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=flag(
            "--endpoint",
            repeat=True,
            convert=lambda urls: tuple(parse_endpoint_url(u) for u in urls),
            metavar="URL",
            help="a model server (repeatable), e.g. http://127.0.0.1:8001; no Kubernetes needed",
        ),
    )
    resources: tuple[Path, ...] = field(
        default=(),
        metadata=flag(
            "--resources",
            parse=Path,
            repeat=True,
            convert=tuple,
            metavar="FILE",
            help="InferencePool/InferenceModel/InferenceObjective YAML (repeatable)",
        ),
    )
    response_processing: ResponseProcessing = field(
        default=ResponseProcessing.FULL,
        metadata=flag(
            "--response-processing",
            choices=[m.value for m in ResponseProcessing],
            convert=ResponseProcessing,
            flag_default=ResponseProcessing.FULL.value,
            gateway_default=ResponseProcessing.TAP.value,
            help="full (kvroute epp default): every response chunk through the EPP (upstream); "
            "tap (kvroute serve default): the body skips the EPP, the generated Envoy config's "
            "Lua filter restores the model name and reports usage once per response (behind an "
            "Envoy that streams bodies it acts as full); light: response body skipped (no "
            "model-name restore, no usage metrics)",
        ),
    )
    tap_report: str = field(
        default="http",
        metadata=flag(
            "--tap-report",
            choices=["http", "grpc"],
            help="tap: how Envoy's Lua filter sends the EPP each response's report. http "
            "(default): a plain HTTP/1.1 POST to a second Unix socket beside the EPP's private "
            "ext_proc socket (kvroute serve; a fraction of the CPU of a grpc.aio call); grpc: "
            "the unary gRPC method on the ext_proc server. An EPP on TCP or with TLS always "
            "takes the gRPC report",
        ),
    )
    max_request_body_bytes: int = field(
        default=DEFAULT_MAX_REQUEST_BODY_BYTES,
        metadata=flag(
            "--max-request-body-bytes",
            parse=int,
            metavar="N",
            help="larger request bodies are answered 413 (the EPP buffers each body whole); "
            f"default {DEFAULT_MAX_REQUEST_BODY_BYTES} (64 MiB)",
        ),
    )
    drain_timeout_s: float = field(
        default=30.0,
        metadata=flag(
            "--drain-timeout",
            parse=duration,
            help="on SIGTERM: health NOT_SERVING, new ext_proc streams refused, running streams "
            "get this long to finish before they are cut (0: at once); default 30s, as upstream",
        ),
    )

    # Issue 20 finding 3: in tap mode the EPP ends the ext_proc stream once the request is
    # routed, so an EPP that dies mid-response does not cut the stream (kvroute.extproc.server).
    release_routed_streams: bool = field(
        default=False,
        metadata=flag(
            "--release-routed-streams",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="tap mode: close each ext_proc stream once routed, so streams outlive an EPP "
            "crash; completion then comes only from Envoy's tap report (kvroute serve sets it "
            "under FailOpen)",
        ),
    )

    # OpenTelemetry (None: from the OTEL_* variables; see kvroute.observability.tracing).
    tracing: bool | None = field(
        default=None,
        metadata=flag(
            "--tracing",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="export OpenTelemetry traces over OTLP/gRPC (default off; upstream defaults on; "
            "unset: on iff OTEL_TRACES_EXPORTER=otlp)",
        ),
    )
    tracing_endpoint: str | None = field(
        default=None,
        metadata=flag(
            "--tracing-endpoint",
            metavar="URL",
            help="OTLP/gRPC collector (default OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, "
            "else http://127.0.0.1:4317)",
        ),
    )
    tracing_sampling_ratio: float | None = field(
        default=None,
        metadata=flag(
            "--tracing-sampling-ratio",
            parse=float,
            metavar="R",
            help="share of requests without a sampled parent that are traced, 0..1 "
            "(default OTEL_TRACES_SAMPLER_ARG, else 1)",
        ),
    )
    enable_decision_header: bool = field(
        default=False,
        metadata=flag(
            "--enable-decision-header",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="a request carrying x-kvroute-explain gets an x-kvroute-decision response "
            "header (pick, scores, fallbacks); off by default",
        ),
    )
    # Active-active replica sync (kvroute.replicasync; issue 17). Off unless --sync-port is set.
    sync_port: int | None = field(
        default=None,
        metadata=flag(
            "--sync-port",
            parse=int,
            help="publish this replica's routing state to its peers on this TCP port "
            "(ZeroMQ PUB, CurveZMQ; 0: any free port); unset: no replica sync",
        ),
    )
    sync_peers: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "--peer",
            repeat=True,
            convert=tuple,
            metavar="tcp://HOST:PORT",
            help="a peer replica's --sync-port (repeatable; a static peer list)",
        ),
    )
    sync_lease_group: str = field(
        default="",
        metadata=flag(
            "--sync-lease-group",
            metavar="NAME",
            help="Kubernetes membership: hold a Lease in --pool-namespace labelled "
            "kvroute.io/sync-group=NAME and peer with every replica holding one",
        ),
    )
    sync_advertise: str = field(
        default_factory=lambda: f"tcp://{os.environ['POD_IP']}" if os.environ.get("POD_IP") else "",
        metadata=flag(
            "--sync-advertise",
            metavar="tcp://HOST",
            help="the address peers reach this replica's --sync-port at, for the Lease "
            "(default tcp://$POD_IP)",
        ),
    )
    sync_key_file: Path | None = field(
        default=None,
        metadata=flag(
            "--sync-key-file",
            parse=Path,
            metavar="FILE",
            help="the pool's CurveZMQ secret certificate (zmq.auth format; required with "
            "--sync-port); also keys the messages' HMAC",
        ),
    )
    sync_authorized_keys: Path | None = field(
        default=None,
        metadata=flag(
            "--sync-authorized-keys",
            parse=Path,
            metavar="DIR",
            help="public certificates allowed to subscribe (default: the pool key's own)",
        ),
    )
    replica_id: str = field(
        default_factory=lambda: (
            os.environ.get("POD_NAME", "") or f"{socket.gethostname()}-{os.getpid()}"
        ),
        metadata=flag(
            "--replica-id",
            help="this replica's name among its peers (default POD_NAME, else host-pid)",
        ),
    )
    sync_interval_s: float = field(
        default=0.005,
        metadata=flag(
            "--sync-interval", parse=duration, help="publish batching interval (default 5ms)"
        ),
    )
    sync_peer_timeout_s: float = field(
        default=0.5,
        metadata=flag(
            "--sync-peer-timeout",
            parse=duration,
            help="a peer silent this long is aged out and its in-flight counts leave this "
            "replica's view (default 500ms; it heartbeats every quarter of this)",
        ),
    )

    emit_endpoint_scores: bool = field(
        default=False,
        metadata=flag(
            "--emit-endpoint-scores",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="put the primary profile's per-endpoint scores in the envoy.lb metadata under "
            "x-gateway-destination-endpoint-scores (the endpoint list is not reordered)",
        ),
    )

    # ext_proc on this Unix socket instead of --grpc-port (kvroute serve: Envoy's only way in;
    # issue 20 finding 7). Not a flag: the gateway sets it. The health port stays TCP.
    grpc_uds: Path | None = None
    max_buffered_body_bytes: int = field(
        default=DEFAULT_MAX_BUFFERED_BODY_BYTES,
        metadata=flag(
            "--max-buffered-body-bytes",
            parse=int,
            metavar="N",
            help="request body bytes all streams together may hold; past it a request gets 503 "
            f"(default {DEFAULT_MAX_BUFFERED_BODY_BYTES}, 256 MiB)",
        ),
    )
    # mTLS for ext_proc (issue 20 finding 7): a CA bundle the client certificate must chain to.
    require_client_cert: bool = field(
        default=False,
        metadata=flag(
            "--require-client-cert",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="mTLS: ext_proc clients must present a certificate signed by --client-ca-path",
        ),
    )
    client_ca_path: Path | None = field(
        default=None,
        metadata=flag(
            "--client-ca-path", parse=Path, help="CA bundle (PEM) for --require-client-cert"
        ),
    )
    # A static bearer token the metrics endpoint requires (``--metrics-endpoint-auth``).
    metrics_bearer_token: str | None = field(
        default=None,
        metadata=flag(
            "--metrics-bearer-token-file",
            convert=lambda source: _metrics_token(source),
            flag_default="",
            metavar="FILE",
            help="the token /metrics requires ('Authorization: Bearer <token>'); env:NAME reads "
            "it from an environment variable; implies --metrics-endpoint-auth",
        ),
    )
    metrics_endpoint_auth: bool = field(
        default=False,
        metadata=flag(
            "--metrics-endpoint-auth",
            parse=parse_bool,
            optional_value=True,
            metavar="BOOL",
            help="require a bearer token on /metrics: checked with Kubernetes TokenReview and "
            "SubjectAccessReview, as upstream (needs a cluster config), or against "
            "--metrics-bearer-token-file when one is given",
        ),
    )

    def __post_init__(self) -> None:
        if self.max_buffered_body_bytes <= 0:
            raise ConfigError(
                f"--max-buffered-body-bytes must be positive, got {self.max_buffered_body_bytes}"
            )
        if self.require_client_cert and (not self.secure_serving or self.client_ca_path is None):
            raise ConfigError(
                "--require-client-cert needs --secure-serving=true and --client-ca-path FILE"
            )
        if self.sync_port is None and (self.sync_peers or self.sync_lease_group):
            raise ConfigError("--peer and --sync-lease-group need --sync-port")
        if self.sync_lease_group and not self.sync_advertise:
            raise ConfigError("--sync-lease-group needs --sync-advertise (or POD_IP)")
        if self.sync_port is not None and self.sync_key_file is None:
            raise ConfigError("--sync-port needs --sync-key-file (sync is always authenticated)")
        if not 0 < self.sync_interval_s <= 1.0:
            raise ConfigError(f"--sync-interval must be in (0, 1s], got {self.sync_interval_s}")
        if not 4 * self.sync_interval_s <= self.sync_peer_timeout_s <= 60.0:
            raise ConfigError(
                "--sync-peer-timeout must be at least 4 x --sync-interval and at most 60s, "
                f"got {self.sync_peer_timeout_s}"
            )
        if self.fairness_id_metric_label_limit < 0:
            raise ConfigError(
                "--fairness-id-metric-label-limit must not be negative, got "
                f"{self.fairness_id_metric_label_limit}"
            )
        if self.drain_timeout_s < 0:
            raise ConfigError(f"--drain-timeout must not be negative, got {self.drain_timeout_s}")
        if self.config_file is not None and self.config_text is not None:
            raise ConfigError("--config-file and --config-text are mutually exclusive")
        if self.pool_name and self.endpoint_selector:
            raise ConfigError("--pool-name and --endpoint-selector are mutually exclusive")
        if len(self.endpoint_target_ports) > 8:
            raise ConfigError("--endpoint-target-ports takes 1 to 8 ports")
        if self.release_routed_streams and self.response_processing is not ResponseProcessing.TAP:
            raise ConfigError("--release-routed-streams needs --response-processing=tap")
        if self.max_request_body_bytes <= 0:
            raise ConfigError(
                f"--max-request-body-bytes must be positive, got {self.max_request_body_bytes}"
            )

    @property
    def pool_label(self) -> str:
        """The ``name`` label of pool metrics."""
        return self.pool_name or "kvroute"


def flags() -> list[tuple[dataclasses.Field[Any], Flag]]:
    """Every field that is a flag, with its flag declaration, in declaration order."""
    return [
        (f, f.metadata[FLAG_KEY]) for f in dataclasses.fields(EppSettings) if FLAG_KEY in f.metadata
    ]


def _flag_default(f: dataclasses.Field[Any], spec: Flag, gateway: bool) -> Any:
    if gateway and spec.gateway_default is not UNSET:
        return spec.gateway_default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()  # e.g. from_env: read when the parser is built
    if spec.repeat:
        return []
    if spec.flag_default is not UNSET:
        return spec.flag_default
    return f.default


def _dest(flag_name: str) -> str:
    return flag_name.lstrip("-").replace("-", "_")


def add_epp_arguments(parser: argparse.ArgumentParser, *, gateway: bool = False) -> None:
    """Upstream's EPP flags plus kvroute's static ``--endpoint``/``--resources``.

    ``gateway`` (``kvroute serve``): the EPP runs beside Envoy on loopback, so TLS defaults to
    off there, and ports default to 0 (any free port) except ``--metrics-port``.
    """
    g = parser.add_argument_group("endpoint picker")
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f, spec in flags():
        target: Any = g
        if spec.exclusive is not None:
            if spec.exclusive not in groups:
                groups[spec.exclusive] = g.add_mutually_exclusive_group()
            target = groups[spec.exclusive]
        kwargs: dict[str, Any] = {"dest": f.name, "default": _flag_default(f, spec, gateway)}
        if spec.parse is not None:
            kwargs["type"] = spec.parse
        if spec.help is not None:
            kwargs["help"] = spec.help
        if spec.metavar is not None:
            kwargs["metavar"] = spec.metavar
        elif spec.choices is None and f.name != _dest(spec.name):
            kwargs["metavar"] = _dest(spec.name).upper()  # as argparse names it from the flag
        if spec.choices is not None:
            kwargs["choices"] = list(spec.choices)
        if spec.repeat:
            kwargs["action"] = "append"
        if spec.optional_value:
            kwargs.update(nargs="?", const=True)
        target.add_argument(spec.name, **kwargs)
        if gateway:
            for alias in spec.gateway_aliases:
                alias_kwargs = {k: v for k, v in kwargs.items() if k != "default"}
                alias_kwargs["help"] = f"alias of {spec.name}"
                target.add_argument(alias, **alias_kwargs)


def settings_from_args(args: argparse.Namespace, *, bind_host: str = "0.0.0.0") -> EppSettings:
    """The settings a parsed ``add_epp_arguments`` namespace describes."""
    values: dict[str, Any] = {"bind_host": bind_host}
    for f, spec in flags():
        value = getattr(args, f.name)
        values[f.name] = spec.convert(value) if spec.convert is not None else value
    return EppSettings(**values)


def _metrics_token(source: str) -> str | None:
    """The static token of ``--metrics-bearer-token-file`` (a file, or ``env:NAME``)."""
    if not source:
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
