"""List-then-watch of one resource kind into a local cache (client-go's Reflector, in small).

The loop: list (replacing the whole cache, so anything missed while disconnected is reconciled),
then watch from the list's ``resourceVersion``. Every change hands the full cache to ``on_change``;
consumers compute desired state from it and diff against what they last applied, so the same
event seen twice, or a relist after a gap, never duplicates or loses anything.

Failure handling:

* 410 Gone (the resourceVersion was compacted away), as an ``ERROR`` event or an HTTP status:
  relist at once, no backoff (the server is healthy, our position is just too old);
* anything else (connection refused during an API server restart, a stream cut mid-chunk, a 5xx):
  relist after an exponential backoff with full jitter (:class:`kvroute.backoff.Backoff`),
  reset after each successful list.

lightkube's ``watch`` already reconnects from the last seen resourceVersion when the server ends a
stream cleanly (``timeoutSeconds``), which is the common case and costs no relist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from kvroute.backoff import Backoff

log = logging.getLogger(__name__)

OnChange = Callable[[Mapping[str, Any]], None]


def object_key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace or ''}/{meta.name}"


def _status_code(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError):
        code = getattr(exc.status, "code", None)
        return code if isinstance(code, int) else None
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_gone(exc: BaseException) -> bool:
    """True for 410 Gone, whichever way the server sent it."""
    return _status_code(exc) == 410


class Reflector:
    """Keeps ``cache`` equal to the server's view of ``resource`` (filtered) and reports changes.

    Args:
        client: a lightkube ``AsyncClient``.
        resource: a lightkube resource class (``Pod``, a generic CRD class, ...).
        namespace: namespace to list/watch.
        on_change: called with a read-only view of the whole cache after each list and event.
        labels: label selector (equality terms), sent to the server.
        fields: field selector, sent to the server (e.g. ``{"metadata.name": pool}``).
        backoff: retry policy for non-410 failures.
        watch_timeout: ask the server to end each watch after this many seconds (then resume).
        missing_retry: seconds between lists while the kind is not served (404 before the first
            successful list, e.g. an optional CRD that is not installed).
    """

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        *,
        namespace: str,
        on_change: OnChange,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = 300,
        missing_retry: float = 60.0,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._on_change = on_change
        self._labels: dict[str, Any] | None = dict(labels) if labels else None
        self._fields: dict[str, Any] | None = dict(fields) if fields else None
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._missing_retry = missing_retry
        self._cache: dict[str, Any] = {}
        self.synced = asyncio.Event()
        self.lists = 0  # how many full lists ran (1 + relists); tests and logs read it
        self.gone = 0  # how many 410s forced a relist
        self.failures = 0  # how many other failures forced a backoff
        self.missing = False  # the list got 404: the kind is not served (yet)

    @property
    def cache(self) -> Mapping[str, Any]:
        return MappingProxyType(self._cache)

    @property
    def kind(self) -> str:
        return str(getattr(self._resource, "__name__", self._resource))

    async def run(self) -> None:
        """List and watch until cancelled; never returns otherwise."""
        retries = self._backoff.retries()
        while True:
            try:
                rv = await self._list()
                retries.reset()
                await self._watch(rv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervisor loop: log, back off, relist
                if _status_code(exc) == 404 and not self.synced.is_set():
                    # The kind is not served (CRD not installed): say so once, retry slowly.
                    if not self.missing:
                        log.info(
                            "%s is not served by the API server (CRD not installed?); "
                            "retrying every %.0fs",
                            self.kind,
                            self._missing_retry,
                        )
                    self.missing = True
                    await asyncio.sleep(self._missing_retry)
                    continue
                if is_gone(exc):
                    self.gone += 1
                    log.info("%s watch expired (410 Gone); relisting", self.kind)
                    continue
                self.failures += 1
                delay = retries.failed()
                log.warning(
                    "%s list/watch failed (%s: %s); retrying in %.2fs",
                    self.kind,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        items = self._client.list(
            self._resource, namespace=self._namespace, labels=self._labels, fields=self._fields
        )
        fresh = {object_key(o): o async for o in items}
        rv = str(items.resourceVersion)
        self.lists += 1
        self._cache = fresh
        self._on_change(self.cache)
        self.synced.set()
        return rv

    async def _watch(self, rv: str) -> None:
        events = self._client.watch(
            self._resource,
            namespace=self._namespace,
            labels=self._labels,
            fields=self._fields,
            resource_version=rv,
            server_timeout=self._watch_timeout,
        )
        async for etype, obj in events:
            if etype == "BOOKMARK":
                continue  # lightkube tracks the bookmark's resourceVersion for reconnects
            key = object_key(obj)
            if etype == "DELETED":
                if self._cache.pop(key, None) is None:
                    continue
            elif etype in ("ADDED", "MODIFIED"):
                self._cache[key] = obj
            else:
                log.debug("%s: ignoring watch event type %s", self.kind, etype)
                continue
            self._on_change(self.cache)
