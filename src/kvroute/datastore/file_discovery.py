"""Upstream's ``file-discovery``: the pool's endpoints from a watched YAML/JSON file, no Kubernetes.

Configured as llm-d-router does, in the EndpointPickerConfig::

    plugins:
    - {name: my-endpoints, type: file-discovery, parameters: {path: /etc/epp/endpoints.yaml,
                                                              watchFile: true}}
    dataLayer:
      discovery: {pluginRef: my-endpoints}

File format (YAML or JSON, at most 1 MiB)::

    endpoints:
    - {name: vllm-0, namespace: default, address: 10.0.0.1, port: "8000", labels: {k: v}}

``address`` must be a literal IPv4 address, ``port`` an integer 1-65535 (upstream writes it as
a string; a number is accepted too), ``namespace`` defaults to ``default``; a repeated
``namespace/name`` keeps the last entry (processed top to bottom). Each entry becomes the
datastore endpoint ``<namespace>/<name>``. With ``watchFile`` the file is re-read when it
changes (polled each second by modification time, size and inode, so an atomic rename is seen
too): current entries are upserted and the ones gone from the file removed. A reload that
fails (unreadable, invalid) is logged and the previous endpoints stay; an invalid file at
startup is a :class:`~kvroute.errors.ConfigError`.

``multicluster-file-discovery`` (Alpha upstream) reads the same file format, watched the same
way, for a cluster-scoped EPP whose endpoints are peer clusters (each reached at its gateway):
the only difference is that ``address`` may also be an IPv6 literal or a DNS-1123 hostname
(``gw.cluster-a.example.com``). Its ``metricsAddress``/``metricsPort`` labels are read by the
``multicluster-metrics-data-source`` (:mod:`kvroute.datalayer.multicluster`).

:func:`parse_endpoints` is the sans-IO core; :class:`FileDiscovery` is the endpoint source.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from kvroute.errors import ConfigError

__all__ = [
    "FILE_DISCOVERY",
    "MAX_FILE_BYTES",
    "MULTICLUSTER_FILE_DISCOVERY",
    "FileDiscovery",
    "FileDiscoveryParams",
    "FileEndpoint",
    "parse_endpoints",
]

log = logging.getLogger(__name__)

FILE_DISCOVERY = "file-discovery"
MULTICLUSTER_FILE_DISCOVERY = "multicluster-file-discovery"
DISCOVERY_TYPES = (FILE_DISCOVERY, MULTICLUSTER_FILE_DISCOVERY)
MAX_FILE_BYTES = 1 << 20
# A DNS-1123 subdomain: dot-separated lowercase labels of [a-z0-9-], each starting and ending
# alphanumeric, at most 253 characters in all (what Kubernetes accepts as a host name).
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_HOSTNAMES = "hostnames"  # the validation-context flag: addresses may be host names


class FileDiscoveryParams(BaseModel):
    """The plugin's parameters: ``path`` (required) and ``watchFile`` (false)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str = Field(min_length=1)
    watch_file: bool = Field(default=False, alias="watchFile")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    address: str
    port: int | str
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        if info.context and info.context.get(_HOSTNAMES):
            return _host_or_ip(value)
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str) -> int:
        if isinstance(value, str):
            if not value.isdigit():
                raise ValueError(f"{value!r} is not a port number")
            value = int(value)
        if isinstance(value, bool) or not 1 <= value <= 65535:
            raise ValueError(f"{value!r} is not in 1..65535")
        return value


def _host_or_ip(value: str) -> str:
    """An IP literal (v4 or v6) or a DNS-1123 subdomain, as a cluster gateway may be reached."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(value):
        return value
    raise ValueError(
        f"{value!r} is neither an IP address nor a DNS-1123 host name (lowercase "
        "letters, digits, '-' and '.')"
    )


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[_Entry] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FileEndpoint:
    name: str  # the datastore name: "<namespace>/<name>"
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_endpoints(
    data: bytes, source: str = "<endpoints>", *, hostnames: bool = False
) -> list[FileEndpoint]:
    """The endpoints a file lists, last entry winning per ``namespace/name``.

    ``hostnames`` (``multicluster-file-discovery``): an address may be an IPv6 literal or a
    DNS-1123 host name too, not only an IPv4 address.
    """
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(data)} bytes; the endpoints file may be at most 1 MiB")
    try:
        doc = yaml.safe_load(data) if data.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not YAML or JSON: {exc}") from None
    try:
        parsed = _File.model_validate(
            doc if doc is not None else {}, context={_HOSTNAMES: hostnames}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    out: dict[str, FileEndpoint] = {}
    for e in parsed.endpoints:
        key = f"{e.namespace}/{e.name}"
        out.pop(key, None)  # keep file order for the last occurrence
        out[key] = FileEndpoint(key, e.address, int(e.port), dict(e.labels))
    return list(out.values())


class EndpointSink(Protocol):
    def upsert_endpoint(
        self, name: str, address: str, port: int, labels: Mapping[str, str] | None = None
    ) -> object: ...

    def remove_endpoint(self, name: str) -> object: ...


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileDiscovery:
    """An endpoint source reading ``path``; see the module docstring."""

    def __init__(
        self, params: FileDiscoveryParams, *, poll_interval: float = 1.0, hostnames: bool = False
    ) -> None:
        self.path = Path(params.path)
        self.hostnames = hostnames  # multicluster-file-discovery: host names allowed
        self.watch = params.watch_file
        self.poll_interval = poll_interval
        self._synced = False
        self._current: dict[str, FileEndpoint] = {}
        self._stamp: tuple[int, int, int] | None = None  # the file version last read
        self.reloads = 0  # successful loads (tests and logs read it)
        self.failures = 0

    @property
    def synced(self) -> bool:
        return self._synced

    def _read(self) -> list[FileEndpoint]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the endpoints file: {exc}") from None
        return parse_endpoints(data, str(self.path), hostnames=self.hostnames)

    def load(self, sink: EndpointSink) -> None:
        """Read the file and reconcile ``sink``; raises :class:`ConfigError` when invalid."""
        self._stamp = _stamp(self.path)  # before reading: a write racing the read is re-read
        endpoints = self._read()
        wanted = {e.name: e for e in endpoints}
        for name in [n for n in self._current if n not in wanted]:
            sink.remove_endpoint(name)
        for e in endpoints:
            if self._current.get(e.name) != e:
                sink.upsert_endpoint(e.name, e.address, e.port, e.labels)
        self._current = wanted
        self._synced = True
        self.reloads += 1

    async def run(self, datastore: EndpointSink) -> None:
        if not self._synced:
            self.load(datastore)
        if not self.watch:
            return
        while True:
            await asyncio.sleep(self.poll_interval)
            now = _stamp(self.path)
            if now == self._stamp or now is None:
                continue
            try:
                self.load(datastore)
                log.info("%s reloaded: %d endpoints", self.path, len(self._current))
            except ConfigError as exc:
                self.failures += 1
                log.error("%s; keeping the previous %d endpoints", exc.message, len(self._current))


def file_discovery_for(config: Any) -> FileDiscovery | None:
    """The source ``dataLayer.discovery`` names: a ``file-discovery`` or a
    ``multicluster-file-discovery`` plugin (the latter accepts host names as addresses)."""
    data_layer = getattr(config, "data_layer", None)
    ref = getattr(getattr(data_layer, "discovery", None), "plugin_ref", None)
    if ref is None:
        return None
    specs: Sequence[Any] = getattr(config, "plugins", ())
    spec = next((p for p in specs if p.instance_name == ref), None)
    if spec is None:
        raise ConfigError(f"dataLayer.discovery.pluginRef: no plugin named {ref!r}")
    if spec.type not in DISCOVERY_TYPES:
        raise ConfigError(
            f"dataLayer.discovery.pluginRef: {ref!r} is a {spec.type!r}; kvroute supports "
            f"the {FILE_DISCOVERY!r} and {MULTICLUSTER_FILE_DISCOVERY!r} discovery plugins"
        )
    try:
        params = FileDiscoveryParams.model_validate(dict(spec.parameters or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"plugin {ref!r} ({spec.type}): parameters.{problems}") from None
    return FileDiscovery(params, hostnames=spec.type == MULTICLUSTER_FILE_DISCOVERY)
