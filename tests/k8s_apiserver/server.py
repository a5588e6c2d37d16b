"""A small in-process Kubernetes API server for tests (aiohttp on loopback).

No real kube-apiserver can run on our machines, so the controller tests talk to this one with the
real client library (lightkube) and ``kubectl`` talks to it for ``apply --dry-run=client``. It
speaks the wire protocol those clients use:

* discovery: ``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>`` (legacy,
  unaggregated documents; clients fall back to them);
* list (``GET`` a collection) answering ``metadata.resourceVersion``, with ``labelSelector``,
  ``fieldSelector`` (``metadata.name``/``metadata.namespace`` only), ``limit``/``continue``;
* watch (``?watch=true``): newline-delimited JSON events ``ADDED``/``MODIFIED``/``DELETED``, plus
  ``BOOKMARK`` every ``bookmark_interval`` seconds when ``allowWatchBookmarks=true``;
  ``resourceVersion`` unset or ``"0"`` starts with synthetic ``ADDED`` events for what exists; a
  resourceVersion older than the retained history gets 410 Gone, either as an ``ERROR`` event
  carrying a ``Status`` with code 410 inside a 200 stream (what kube-apiserver does) or, with
  ``gone_as_http=True``, as an HTTP 410 response; ``timeoutSeconds`` ends the stream cleanly;
* create (``POST``), get, replace (``PUT``, optimistic concurrency: a stale
  ``metadata.resourceVersion`` gets 409 Conflict), delete, and ``PATCH`` with
  ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` and
  ``application/apply-patch+yaml``;
* the ``status`` subresource (``GET``/``PUT``/``PATCH``): writes there change only ``.status``, and
  writes to the main resource leave ``.status`` alone for types that have the subresource;
* ``metadata.generation`` bumps when ``.spec`` changes; ``creationTimestamp``/``uid`` on create.

Fault injection for tests: :meth:`FakeApiServer.compact` (forget history, so resuming watches get
410), :meth:`FakeApiServer.expire_watches` (send a 410 ``ERROR`` event to every open watch),
:meth:`FakeApiServer.end_watches` (end streams cleanly, so clients resume from their last
resourceVersion), :meth:`FakeApiServer.drop_watches` (abort watch connections mid-stream, a
network blip), and
:meth:`FakeApiServer.stop`/:meth:`FakeApiServer.start` (an API server restart on the same port; the
stored objects survive, as etcd would keep them).

What it does NOT implement (on purpose; no test relies on these):

* authentication, authorization (RBAC is not enforced), admission, TLS, HTTP/2, websockets
  (exec/attach/port-forward), protobuf or CBOR encodings, aggregated discovery (v2) and OpenAPI
  documents (``/openapi/v2``, ``/openapi/v3``; run ``kubectl`` with ``--validate=false``);
* schema validation: CRD OpenAPI schemas and CEL rules are stored, not enforced; creating a CRD does
  not register new types (the served types are a fixed table, :mod:`.resource_types`);
* strategic merge patch semantics (list merge keys, ``$patch`` directives): it is applied as a JSON
  merge patch; server-side apply field ownership, ``managedFields``, ``dryRun`` on the server;
  JSON patch (``application/json-patch+json``) is rejected with 415;
* graceful deletion, finalizers, owner references and garbage collection (DELETE removes at once;
  tests set ``deletionTimestamp`` themselves to model a terminating pod);
* ``resourceVersionMatch``, ``sendInitialEvents``, field selectors other than name/namespace,
  watch cache semantics beyond one global, monotonically increasing resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import itertools
import json
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import yaml
from aiohttp import web

from tests.k8s_apiserver.resource_types import (
    DEFAULT_TYPES,
    ResourceType,
    SelectorError,
    fields_match,
    labels_match,
    parse_selector,
)
from tests.k8s_apiserver.wire import (
    Target,
    Watcher,
    error_response,
    json_response,
    merge_patch,
    status_body,
)

Obj = dict[str, Any]
_Key = tuple[str, str, str, str]  # (group, plural, namespace, name); namespace "" if cluster-scoped


class FakeApiServer:
    """See the module docstring. Use as ``async with FakeApiServer() as api: api.url``."""

    def __init__(
        self,
        *,
        types: Iterable[ResourceType] = DEFAULT_TYPES,
        history_limit: int = 10_000,
        bookmark_interval: float = 1.0,
        gone_as_http: bool = False,
    ) -> None:
        self.types: tuple[ResourceType, ...] = tuple(types)
        self.history_limit = history_limit
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self._rv = 0
        self._objects: dict[_Key, Obj] = {}
        self._history: deque[tuple[int, ResourceType, str, Obj]] = deque()
        self._oldest_rv = 0  # watches resuming from below this get 410 Gone
        self._watchers: set[Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.request_log: list[tuple[str, str]] = []  # (method, path_qs), for assertions

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> Obj:
        """A kubeconfig document pointing at this server (no credentials: auth is not enforced)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }

    async def start(self) -> None:
        """Listen on loopback; after :meth:`stop`, on the same port again (a restart)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving; open watches are cut off as a crashing API server would cut them."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- direct store access for tests (what kubelet/controllers would write) ---------------
    def resource_type(self, api_version: str, kind: str) -> ResourceType:
        for t in self.types:
            if t.api_version == api_version and t.kind == kind:
                return t
        raise KeyError(f"{api_version} {kind}")

    @property
    def resource_version(self) -> int:
        return self._rv

    def apply(self, obj: Obj) -> Obj:
        """Create or fully replace ``obj`` (status included) and notify watchers."""
        rtype = self.resource_type(obj["apiVersion"], obj["kind"])
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            meta.setdefault("namespace", "default")
        key = self._key(rtype, meta.get("namespace", ""), meta["name"])
        old = self._objects.get(key)
        return self._store(rtype, key, copy.deepcopy(obj), old)

    def remove(self, api_version: str, kind: str, name: str, namespace: str = "default") -> None:
        rtype = self.resource_type(api_version, kind)
        key = self._key(rtype, namespace if rtype.namespaced else "", name)
        obj = self._objects.pop(key)
        self._emit(rtype, "DELETED", obj, bump=True)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "default") -> Obj | None:
        rtype = self.resource_type(api_version, kind)
        obj = self._objects.get(self._key(rtype, namespace if rtype.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, api_version: str, kind: str) -> list[Obj]:
        rtype = self.resource_type(api_version, kind)
        return [
            copy.deepcopy(o)
            for k, o in self._objects.items()
            if (k[0], k[1]) == (rtype.group, rtype.plural)
        ]

    # -- fault injection ---------------------------------------------------------------------
    def compact(self) -> None:
        """Forget all history: any watch resuming from an older resourceVersion gets 410 Gone."""
        self._history.clear()
        self._oldest_rv = self._rv + 1

    def expire_watches(self) -> None:
        """Send ``ERROR`` (410 Expired) to every open watch, then end it, like a compaction."""
        self.compact()
        for w in list(self._watchers):
            w.queue.put_nowait(
                {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}
            )
            w.queue.put_nowait(None)

    def end_watches(self) -> None:
        """End every open watch cleanly (as ``timeoutSeconds`` would): clients resume from the
        last resourceVersion they saw, without a relist."""
        for w in list(self._watchers):
            w.queue.put_nowait(None)

    def drop_watches(self) -> None:
        """Abort every open watch connection without a clean end of stream (a network blip)."""
        for w in list(self._watchers):
            if w.transport is not None:
                w.transport.close()  # no terminating chunk: the client sees a broken stream
            w.queue.put_nowait(None)
        self._watchers.clear()

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def watching(self, plural: str) -> int:
        """How many watches on ``plural`` are open (tests wait for a watch before faulting it)."""
        return sum(1 for w in self._watchers if w.rtype.plural == plural)

    # -- internals: storage ------------------------------------------------------------------
    @staticmethod
    def _key(rtype: ResourceType, namespace: str, name: str) -> _Key:
        return (rtype.group, rtype.plural, namespace if rtype.namespaced else "", name)

    def _store(self, rtype: ResourceType, key: _Key, obj: Obj, old: Obj | None) -> Obj:
        meta = obj["metadata"]
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            meta["generation"] = 1
        else:
            for k in ("uid", "creationTimestamp"):
                meta[k] = old["metadata"][k]
            gen = old["metadata"].get("generation", 1)
            meta["generation"] = gen + (1 if obj.get("spec") != old.get("spec") else 0)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._emit(rtype, "ADDED" if old is None else "MODIFIED", obj, bump=False)
        return copy.deepcopy(obj)

    def _emit(self, rtype: ResourceType, etype: str, obj: Obj, *, bump: bool) -> None:
        if bump:  # deletions get a fresh resourceVersion, as in etcd
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(obj)
        self._history.append((self._rv, rtype, etype, snapshot))
        while len(self._history) > self.history_limit:
            self._history.popleft()
            self._oldest_rv = self._history[0][0] if self._history else self._rv + 1
        for w in list(self._watchers):
            if w.wants(rtype, snapshot):
                w.queue.put_nowait({"type": etype, "object": snapshot})

    # -- internals: HTTP ---------------------------------------------------------------------
    def _find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        for t in self.types:
            if (t.group, t.version, t.plural) == (group, version, plural):
                return t
        return None

    def _parse(self, parts: list[str]) -> Target | web.Response:
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        rtype = self._find_type(group, version, plural)
        if rtype is None:
            return error_response(
                404, "NotFound", f"the server could not find the requested resource {plural}"
            )
        if namespace is not None and not rtype.namespaced:
            return error_response(404, "NotFound", f"{plural} is not namespaced")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rtype.has_status):
            return error_response(404, "NotFound", f"subresource {sub} not found")
        return Target(rtype, namespace, name, sub)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.request_log.append((request.method, request.path_qs))
        parts = [p for p in request.path.split("/") if p]
        try:
            if not parts:
                return json_response({"paths": ["/api", "/apis", "/version"]})
            if parts == ["version"]:
                return json_response(
                    {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kvroute-fake"}
                )
            if parts == ["api"]:
                return json_response(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                        ],
                    }
                )
            if parts == ["apis"]:
                return json_response(self._group_list())
            if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
                return self._resource_list(*(["", parts[1]] if parts[0] == "api" else parts[1:]))
            if parts[0] not in ("api", "apis"):
                return error_response(
                    404, "NotFound", "the server could not find the requested resource"
                )
            target = self._parse(parts)
            if isinstance(target, web.Response):
                return target
            return await self._handle(request, target)
        except SelectorError as exc:
            return error_response(400, "BadRequest", str(exc))
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            return error_response(400, "BadRequest", f"invalid body: {exc}")

    def _group_list(self) -> Obj:
        groups: dict[str, list[str]] = {}
        for t in self.types:
            if t.group:
                versions = groups.setdefault(t.group, [])
                if t.version not in versions:
                    versions.append(t.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ],
        }

    def _resource_list(self, group: str, version: str) -> web.Response:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for t in self.types:
            if (t.group, t.version) != (group, version):
                continue
            resources.append(
                {
                    "name": t.plural,
                    "singularName": t.singular,
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": verbs,
                    "shortNames": list(t.short_names),
                }
            )
            if t.has_status:
                resources.append(
                    {
                        "name": f"{t.plural}/status",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            return error_response(404, "NotFound", f"no resources in {group}/{version}")
        gv = f"{group}/{version}" if group else version
        return json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": resources,
            }
        )

    async def _handle(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        if t.name is None:
            if method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, t)
                return self._list(request, t)
            if method == "POST":
                return self._create(await self._body(request), t)
            return error_response(405, "MethodNotAllowed", f"{method} on a collection")
        ns = t.namespace or ""
        key = self._key(t.rtype, ns, t.name)
        current = self._objects.get(key)
        if method == "GET":
            if current is None:
                return self._not_found(t)
            return json_response(current)
        if method == "DELETE":
            if current is None:
                return self._not_found(t)
            del self._objects[key]
            self._emit(t.rtype, "DELETED", current, bump=True)
            return json_response(current)
        if method == "PUT":
            return self._replace(await self._body(request), t, key, current)
        if method == "PATCH":
            return await self._patch(request, t, key, current)
        return error_response(405, "MethodNotAllowed", method)

    def _not_found(self, t: Target) -> web.Response:
        group = t.rtype.group
        label = f"{t.rtype.plural}.{group}" if group else t.rtype.plural
        return error_response(404, "NotFound", f'{label} "{t.name}" not found')

    @staticmethod
    async def _body(request: web.Request) -> Obj:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        loaded = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw or b"{}")
        if not isinstance(loaded, dict):
            raise json.JSONDecodeError("body is not an object", raw.decode(errors="replace"), 0)
        return loaded

    def _list(self, request: web.Request, t: Target) -> web.Response:
        labels = parse_selector(request.query.get("labelSelector"))
        fields = parse_selector(request.query.get("fieldSelector"))
        items = [
            o
            for k, o in sorted(self._objects.items())
            if (k[0], k[1]) == (t.rtype.group, t.rtype.plural)
            and (t.namespace is None or k[2] == t.namespace)
            and labels_match(labels, o)
            and fields_match(fields, o)
        ]
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        meta: Obj = {"resourceVersion": str(self._rv)}
        if end < len(items):
            meta["continue"] = str(end)
        return json_response(
            {
                "kind": f"{t.rtype.kind}List",
                "apiVersion": t.rtype.api_version,
                "metadata": meta,
                "items": items[start:end],
            }
        )

    def _create(self, body: Obj, t: Target) -> web.Response:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return error_response(422, "Invalid", "metadata.name: Required value")
        if t.rtype.namespaced:
            ns = t.namespace or meta.get("namespace") or "default"
            if meta.get("namespace", ns) != ns:
                return error_response(
                    400, "BadRequest", "the namespace of the object does not match"
                )
            meta["namespace"] = ns
        key = self._key(t.rtype, meta.get("namespace", ""), name)
        if key in self._objects:
            return error_response(409, "AlreadyExists", f'{t.rtype.plural} "{name}" already exists')
        meta.pop("resourceVersion", None)
        return json_response(self._store(t.rtype, key, body, None), status=201)

    def _merge_subresource(self, t: Target, current: Obj, new: Obj) -> Obj:
        """Status writes change only ``.status``; main writes keep ``.status`` (subresource)."""
        merged = copy.deepcopy(current)
        if t.subresource == "status":
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            return merged
        if t.rtype.has_status:
            new = copy.deepcopy(new)
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        return new

    def _replace(self, body: Obj, t: Target, key: _Key, current: Obj | None) -> web.Response:
        if current is None:
            return self._not_found(t)
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return error_response(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {t.rtype.plural} "{t.name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        new = self._merge_subresource(t, current, body)
        new.setdefault("metadata", {})
        new["metadata"]["name"] = t.name
        if t.rtype.namespaced:
            new["metadata"]["namespace"] = key[2]
        return json_response(self._store(t.rtype, key, new, current))

    async def _patch(
        self, request: web.Request, t: Target, key: _Key, current: Obj | None
    ) -> web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ):
            return error_response(
                415, "UnsupportedMediaType", f"patch type {ctype!r} not supported"
            )
        patch = await self._body(request)
        if current is None:
            if ctype != "application/apply-patch+yaml" or t.subresource:
                return self._not_found(t)
            return self._create(patch, t)
        sent_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return error_response(409, "Conflict", "the object has been modified")
        patched = merge_patch(current, patch)
        new = self._merge_subresource(t, current, patched)
        return json_response(self._store(t.rtype, key, new, current))

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        watcher = Watcher(
            t.rtype,
            t.namespace,
            parse_selector(q.get("labelSelector")),
            parse_selector(q.get("fieldSelector")),
        )
        rv_param = q.get("resourceVersion") or ""
        gone: Obj | None = None
        initial: list[Obj] = []
        if rv_param in ("", "0"):
            for k, o in sorted(self._objects.items()):
                if (k[0], k[1]) == (t.rtype.group, t.rtype.plural) and watcher.wants(t.rtype, o):
                    initial.append({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            since = int(rv_param)
            if since + 1 < self._oldest_rv:
                gone = status_body(
                    410, "Expired", f"too old resource version: {since} ({self._rv})"
                )
            else:
                initial = [
                    {"type": et, "object": copy.deepcopy(o)}
                    for rv, rt, et, o in self._history
                    if rv > since and watcher.wants(rt, o)
                ]
        if gone is not None and self.gone_as_http:
            return json_response(gone, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if gone is not None:
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            await resp.write_eof()
            return resp
        watcher.transport = request.transport
        for ev in initial:
            watcher.queue.put_nowait(ev)
        self._watchers.add(watcher)
        timeout = float(q.get("timeoutSeconds") or 0) or None
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            for _ in itertools.count():
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    async with asyncio.timeout(wait):
                        ev = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks:
                        ev = {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": t.rtype.kind,
                                "apiVersion": t.rtype.api_version,
                                "metadata": {"resourceVersion": str(self._rv)},
                            },
                        }
                    else:
                        continue
                if ev is None:
                    break
                await resp.write(json.dumps(ev).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        except ConnectionError:
            pass  # the client went away, or drop_watches() cut the connection
        finally:
            self._watchers.discard(watcher)
        return resp
