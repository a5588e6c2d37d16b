"""Shared engine of the HTTP-polling ``dataLayer.sources`` plugins (``dcgm-data-source``,
``models-data-source``): poll every endpoint, hand the parsed page to the bound extractors, and
write what they return into ``Endpoint.attributes`` with ``Datastore.set_attributes``.

One loop per source (``run_background``): every ``interval`` it polls all endpoints of the
datastore concurrently on one pooled aiohttp session, each request bounded by a timeout of 80 %
of the interval (so a hung server never makes polls pile up). A failed poll (connection error,
timeout, non-2xx, unparsable page, or an extractor that finds nothing) leaves the endpoint's
attributes as they were and is counted in :class:`PollStats` and logged at DEBUG (a dead pod
must not flood the log); an endpoint that failed ``WARN_AFTER_FAILURES`` times in a row is
logged once at WARNING. ``interval`` is upstream's: a Go duration rounded to the nearest
multiple of the 50 ms base tick (omitted: every tick).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kvroute.config.duration import GoDuration
from kvroute.datastore.endpoint import Endpoint
from kvroute.hostport import format_hostport
from kvroute.plugins.base import Plugin, TypedName

if TYPE_CHECKING:
    from kvroute.datastore.store import Datastore

logger = logging.getLogger(__name__)

BASE_TICK = 0.05  # upstream's --refresh-metrics-interval default
_TIMEOUT_SHARE = 0.8
WARN_AFTER_FAILURES = 5


def round_interval(seconds: float | None) -> float:
    """Upstream's rule: the nearest multiple of the base tick, at least one tick."""
    if seconds is None:
        return BASE_TICK
    return max(1, round(seconds / BASE_TICK)) * BASE_TICK


class HttpSourceParams(BaseModel):
    """The parameters every HTTP-polling source shares (a subclass sets ``path``'s default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    scheme: Literal["http", "https"] = "http"
    path: str = "/"
    insecure_skip_verify: bool = Field(True, alias="insecureSkipVerify")
    interval: GoDuration | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class PollFailed(Exception):
    """A poll produced nothing usable (the message says why)."""


@runtime_checkable
class PollingExtractor(Plugin, Protocol):
    """An extractor bound under an HTTP-polling source: payload -> attribute updates.

    Returns the updates for ``Datastore.set_attributes`` (a None value removes a key); raises
    :class:`PollFailed` when the payload lacks what it reads (the old attributes stay).
    """

    def extract(self, endpoint: Endpoint, payload: Any) -> Mapping[str, object | None]: ...


@dataclass(slots=True)
class PollStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    consecutive: dict[str, int] = field(default_factory=dict)


class HttpPollingSource:
    """Base of a polling ``DataLayerSource``; subclasses set the extractor type and parsing."""

    replaces_metrics = False
    extractor_type: str = ""

    def __init__(
        self,
        type_name: str,
        name: str,
        *,
        scheme: str,
        path: str,
        port: int | None,
        interval: float,
        ssl_context: ssl.SSLContext | bool,
    ) -> None:
        self.typed_name = TypedName(type_name, name)
        self.scheme = scheme
        self.path = path
        self.port = port
        self.interval = interval
        self.timeout = interval * _TIMEOUT_SHARE
        self.stats = PollStats()
        self._ssl = ssl_context
        self._extractors: tuple[PollingExtractor, ...] = ()
        self._datastore: Datastore | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- DataLayerSource ----------------------------------------------------------------------

    def bind_extractors(self, extractors: Sequence[Plugin]) -> list[str]:
        problems: list[str] = []
        bound: list[PollingExtractor] = []
        for plugin in extractors:
            if plugin.typed_name.type == self.extractor_type and isinstance(
                plugin, PollingExtractor
            ):
                bound.append(plugin)
            else:
                problems.append(
                    f"plugin {plugin.typed_name.name!r} is a {plugin.typed_name.type}, "
                    f"expected {self.extractor_type} under {self.typed_name.type} "
                    f"{self.typed_name.name!r}"
                )
        self._extractors = tuple(bound)
        return problems

    @property
    def extractors(self) -> tuple[PollingExtractor, ...]:
        return self._extractors

    # -- lifecycle ----------------------------------------------------------------------------

    def attach(self, datastore: Datastore) -> None:
        self._datastore = datastore

    async def run_background(self) -> None:
        if self._datastore is None:
            raise RuntimeError(f"{self.typed_name}: run_background before attach")
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.poll_all()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- polling ------------------------------------------------------------------------------

    def url(self, endpoint: Endpoint) -> str:
        port = self.port if self.port is not None else endpoint.port
        return f"{self.scheme}://{format_hostport(endpoint.address, port)}{self.path}"

    def parse(self, body: bytes) -> Any:
        """The page as the extractors' payload; raises PollFailed when it cannot be read."""
        raise NotImplementedError

    async def poll_all(self) -> None:
        """One round: poll every endpoint of the datastore (concurrently)."""
        assert self._datastore is not None
        if not self._extractors:
            return  # nothing would consume the page
        endpoints = list(self._datastore.endpoints())
        await asyncio.gather(*(self._poll_one(e) for e in endpoints))

    async def _poll_one(self, endpoint: Endpoint) -> None:
        assert self._datastore is not None
        self.stats.attempts += 1
        try:
            url = self.url(endpoint)
        except PollFailed as exc:
            self._failed(endpoint.name, "-", str(exc))
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._fetch(url)
            payload = self.parse(body)
            updates: dict[str, object | None] = {}
            for extractor in self._extractors:
                updates.update(extractor.extract(endpoint, payload))
        except TimeoutError:
            self._failed(endpoint.name, url, f"timed out after {self.timeout:.3f}s")
            return
        except (PollFailed, aiohttp.ClientError, OSError) as exc:
            self._failed(endpoint.name, url, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a supervisor loop: log, count, keep polling
            logger.warning("unexpected error polling %s (%s)", endpoint.name, url, exc_info=True)
            self._failed(endpoint.name, url, f"{type(exc).__name__}: {exc}")
            return
        self.store(endpoint, updates)
        self.stats.successes += 1
        if self.stats.consecutive.pop(endpoint.name, 0) >= WARN_AFTER_FAILURES:
            logger.warning("%s: %s answers again", self.typed_name, endpoint.name)

    def store(self, endpoint: Endpoint, updates: Mapping[str, object | None]) -> None:
        """Write a successful poll's attribute updates (a subclass may write more)."""
        assert self._datastore is not None
        self._datastore.set_attributes(endpoint.name, updates)

    async def _fetch(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=10.0, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=None),  # the per-poll timeout is ours
            )
        async with self._session.get(url, allow_redirects=False) as response:
            body = await response.read()
            if not 200 <= response.status < 300:
                raise PollFailed(f"HTTP {response.status}")
            return body

    def _failed(self, name: str, url: str, reason: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = reason[:200]
        count = self.stats.consecutive[name] = self.stats.consecutive.get(name, 0) + 1
        level = logging.WARNING if count == WARN_AFTER_FAILURES else logging.DEBUG
        logger.log(
            level,
            "%s: poll of %s (%s) failed (%d in a row): %s",
            self.typed_name,
            name,
            url,
            count,
            reason,
        )


def client_ssl(
    insecure_skip_verify: bool,
    ca_cert_path: str = "",
    client_cert_path: str = "",
    client_key_path: str = "",
) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument for upstream's TLS parameters (False: do not verify)."""
    if not (ca_cert_path or client_cert_path):
        return not insecure_skip_verify
    context = ssl.create_default_context(cafile=ca_cert_path or None)
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert_path:
        context.load_cert_chain(client_cert_path, client_key_path or None)
    return context
