"""The response tap: Envoy reads the response body so that the EPP does not have to (issue 19).

In ``tap`` response processing the ext_proc filter does not stream the response body to the
EPP (``response_body_mode: NONE``, so no gRPC message per token). Instead this Lua filter does
the two things the EPP used to need every chunk for. It sits *before* ext_proc in the HTTP
filter list, so on the way back it runs after ext_proc has released the response headers and
they have gone to the client. That order matters (verified with Envoy 1.40): the Lua buffer's
``setBytes`` also sets ``content-length`` on the response headers, and a length set while
ext_proc still held them went to the client as the length of the whole body, cutting a stream
after its first event. When it rewrites, the filter removes the upstream's ``content-length``
(the body's length changes), as ext_proc does for bodies it streams.

* **model-name restore**: when the EPP's routing answer says the model was rewritten (dynamic
  metadata ``kvroute.tap``: ``from`` and ``to``, the JSON-encoded served and client-facing
  names), it replaces ``"model":<from>`` and ``"model": <from>`` with the client's name in every
  chunk, the same byte replacement as ``kvroute.protocol.response_rewrite``. A chunk tail that
  could be the start of a pattern is held back and joined to the next chunk (released at the end
  of stream), so a name split across two upstream writes is still restored.
* **usage**: it keeps a JSON body whole up to ``WHOLE_CAP`` bytes, an SSE stream up to
  ``2 * EDGE_CAP`` bytes, and otherwise the first and last ``EDGE_CAP`` bytes (usage is in an
  SSE stream's first and last events and at the end of a JSON document, so Envoy holds and the
  EPP parses a bounded amount per answer, whatever its length). At the end of the response it
  sends them to the EPP in one unary gRPC call (``TAP_METHOD``; payload in
  :mod:`kvroute.extproc.tap`). The EPP reads usage from them with its own parsers and records
  it with the completion of the ext_proc stream that routed the request, matched by the ``id``
  it put in the metadata. The call goes to the cluster the metadata names (``cluster``: the EPP
  replica that holds the stream), else to the ext_proc cluster. The call is synchronous and is
  made while the response's last bytes are held (one loopback round trip), so the EPP records
  completion before the client has the end of the response, as in ``full`` mode: for a body of
  known length inside the chunk loop, at its last chunk; otherwise (SSE, chunked) after the
  loop, at the end-of-stream frame. (Verified with Envoy 1.40: the end of a content-length body
  was *not* held by a call made after the loop; the client had its answer before the EPP had
  the report in 20 of 40 requests.) With ``kvroute serve``'s private Unix sockets (and no TLS)
  the call is a plain HTTP/1.1 POST of the same payload to the EPP's report socket instead
  (``http_cluster``; :mod:`kvroute.extproc.tap_http`: a fraction of grpc.aio's CPU per call).
  Envoy ends the ext_proc
  stream a moment earlier (when the upstream's end passes ext_proc), so the EPP holds a stream
  that ended without its report for up to ``TAP_GRACE_S`` (``kvroute.extproc.server``) before
  calling it a disconnect (a client that left mid-stream: no report comes).
"""

from __future__ import annotations

from typing import Any

from kvroute.extproc.messages import DESTINATION_SERVED_HEADER as SERVED_HEADER
from kvroute.extproc.tap import TAP_METHOD, TAP_NAMESPACE
from kvroute.extproc.tap_http import TAP_HTTP_PATH

WHOLE_CAP = 64 * 1024
EDGE_CAP = 8 * 1024

_T = "type.googleapis.com/"

_LUA = r"""
local TAP_METHOD = "@METHOD@"
local HTTP_CLUSTER = "@HTTP_CLUSTER@"  -- "": reports go over gRPC
local HTTP_PATH = "@HTTP_PATH@"
local WHOLE_CAP = @WHOLE@
local EDGE_CAP = @EDGE@

local function replace_plain(s, old, new)
  local a, b = string.find(s, old, 1, true)
  if a == nil then return s end
  local out, i = {}, 1
  while a ~= nil do
    out[#out + 1] = string.sub(s, i, a - 1)
    out[#out + 1] = new
    i = b + 1
    a, b = string.find(s, old, i, true)
  end
  out[#out + 1] = string.sub(s, i)
  return table.concat(out)
end

-- start of the shortest tail of s that is a proper prefix of a pattern (#s + 1: none)
local function holdback(s, p1, p2)
  local n = #s
  local lo = n - #p2 + 2
  if lo < 1 then lo = 1 end
  local q = string.find(s, '"', lo, true)
  while q ~= nil do
    local tail = string.sub(s, q)
    if (#tail < #p1 and string.sub(p1, 1, #tail) == tail)
      or (#tail < #p2 and string.sub(p2, 1, #tail) == tail) then
      return q
    end
    q = string.find(s, '"', q + 1, true)
  end
  return n + 1
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end

local function now_ms(h)
  local ok, t = pcall(function() return h:timestamp() end)
  if ok and t ~= nil then return tonumber(t) end
  return nil
end

function envoy_on_response(h)
  local md = h:streamInfo():dynamicMetadata():get("@NAMESPACE@")
  if md == nil or md["id"] == nil then return end
  local id = md["id"]
  local from, to = md["from"], md["to"]
  local p1, p2, r1, r2
  if from ~= nil and to ~= nil then
    p1, r1 = '"model":' .. from, '"model":' .. to
    p2, r2 = '"model": ' .. from, '"model": ' .. to
  end
  local ctype = h:headers():get("content-type") or ""
  local sse = string.find(string.lower(ctype), "text/event-stream", 1, true) ~= nil
  -- an SSE stream's usage is in its first and last events: keep only those edges
  local keep = WHOLE_CAP
  if sse then keep = 2 * EDGE_CAP end
  -- A body of known length: the report goes out while its last chunk is held (Envoy 1.40 lets
  -- the end of a content-length body pass a call made after the loop).
  local clen = tonumber(h:headers():get("content-length") or "")
  if p1 ~= nil then h:headers():remove("content-length") end
  local add = md["headers"]  -- the EPP's response headers (ext_proc skips them in tap mode)
  if add ~= nil then
    for k, v in pairs(add) do h:headers():replace(k, v) end
  end
  local enc = h:headers():get("content-encoding")
  local read = enc == nil or enc == "" or string.lower(enc) == "identity"
  local head, tail, tail_len = {}, {}, 0
  local head_len, total, first = 0, 0, nil
  local carry = ""
  local reported = false
  local function report()
    local kind, head_str, tail_str = "skip", "", ""
    if read and total <= keep then
      kind, head_str = "whole", table.concat(head)
    elseif read then
      kind = "edges"
      head_str = string.sub(table.concat(head), 1, EDGE_CAP)
      tail_str = string.sub(table.concat(tail), -EDGE_CAP)
    end
    local first_ms = -1
    if first ~= nil then
      local t = now_ms(h)
      if t ~= nil then first_ms = t - first end
    end
    local status = h:headers():get(":status") or "0"
    local served = h:headers():get("@SERVED@") or ""
    local sse_flag = "0"
    if sse then sse_flag = "1" end
    local payload = id .. "\n" .. kind .. "\n" .. tostring(total) .. "\n" ..
                    tostring(first_ms) .. "\n" .. status .. "\n" .. sse_flag .. "\n" ..
                    served .. "\n" .. tostring(#head_str) .. "\n" .. head_str .. tail_str
    if md["cluster"] == nil and HTTP_CLUSTER ~= "" then
      h:httpCall(HTTP_CLUSTER, {
        [":method"] = "POST", [":path"] = HTTP_PATH, [":authority"] = "kvroute-epp",
        ["content-type"] = "application/octet-stream",
      }, payload, 2000)
      return
    end
    local frame = "\0" .. be32(#payload) .. payload
    local cluster = md["cluster"] or "@CLUSTER@"
    h:httpCall(cluster, {
      [":method"] = "POST", [":path"] = TAP_METHOD, [":authority"] = "kvroute-epp",
      ["content-type"] = "application/grpc", ["te"] = "trailers",
    }, frame, 2000)
  end
  for chunk in h:bodyChunks() do
    local len = chunk:length()
    if read and (len > 0 or carry ~= "") then
      local s = ""
      if len > 0 then s = chunk:getBytes(0, len) end
      if first == nil and len > 0 then first = now_ms(h) end
      total = total + len
      if head_len < keep then
        head[#head + 1] = s
        head_len = head_len + #s
      end
      tail[#tail + 1] = s
      tail_len = tail_len + #s
      while #tail > 1 and tail_len - #tail[1] >= EDGE_CAP do
        tail_len = tail_len - #tail[1]
        table.remove(tail, 1)
      end
      if p1 ~= nil then
        local data = carry .. s
        if string.find(data, from, 1, true) ~= nil then
          data = replace_plain(replace_plain(data, p1, r1), p2, r2)
        end
        local hold = #data + 1  -- the last chunk of a known-length body holds nothing back
        if clen == nil or total < clen then hold = holdback(data, p1, p2) end
        carry = string.sub(data, hold)
        data = string.sub(data, 1, hold - 1)
        if data ~= s then chunk:setBytes(data) end
      end
    elseif len > 0 then
      total = total + len
    end
    if clen ~= nil and total >= clen and not reported then
      reported = true
      report()
    end
  end
  if carry ~= "" then
    h:logErr("kvroute response tap: response ended by trailers with " .. #carry ..
             " bytes held for the model-name restore")
  end
  if not reported then report() end
end
"""


def lua_source(epp_cluster: str, http_cluster: str = "") -> str:
    """The filter's Lua; ``http_cluster``: reports go there as plain HTTP/1.1 POSTs
    (:mod:`kvroute.extproc.tap_http`) unless the metadata names a replica's cluster."""
    return (
        _LUA.replace("@METHOD@", TAP_METHOD)
        .replace("@HTTP_CLUSTER@", http_cluster)
        .replace("@HTTP_PATH@", TAP_HTTP_PATH)
        .replace("@WHOLE@", str(WHOLE_CAP))
        .replace("@EDGE@", str(EDGE_CAP))
        .replace("@NAMESPACE@", TAP_NAMESPACE)
        .replace("@CLUSTER@", epp_cluster)
        .replace("@SERVED@", SERVED_HEADER)
    )


def response_tap_filter(epp_cluster: str, http_cluster: str = "") -> dict[str, Any]:
    """The Lua HTTP filter; goes right before ext_proc in ``http_filters``."""
    return {
        "name": "kvroute.response_tap",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": lua_source(epp_cluster, http_cluster)},
        },
    }
