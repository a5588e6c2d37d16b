"""FailOpen's model rewrites without the EPP (issue 20 finding 3).

Under FailOpen, a request the EPP did not route (it is down) goes to the pool round robin with
its body untouched. Without the EPP nobody applied the InferenceModel / InferenceModelRewrite
rules, so ``model: chat`` reached the servers as ``chat`` and got 404. The generated Envoy config
therefore carries the rewrite table the EPP had at startup (the ``--resources`` files), and a
Lua filter after ext_proc applies it to requests that arrive there without a destination (the
EPP failed open): the body's first ``"model": "<name>"`` gets a target drawn with the table's
weights, as :meth:`kvroute.requestcontrol.model_resolution.ModelResolver.resolve` would.

What still degrades with the EPP down (documented in docs/security.md): the table is the one
loaded at startup (later changes of a Kubernetes-watched pool are not in it); the rewrite
headers (``x-llm-d-model-name-rewrite``) and objectives are not applied; the response's
``model`` is the served name, not restored to the client's (the restore needs the EPP's answer);
requests are spread round robin without load awareness; the first ``model`` key in the body is
the one rewritten (a tool schema with a ``"model"`` string property before the top-level one
would be rewritten instead).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvroute.gateway.edge import DESTINATION_HEADER
from kvroute.settings import EppSettings

_T = "type.googleapis.com/"
REWRITE_HEADER = "x-kvroute-failopen-rewrite"

Targets = Sequence[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class FailOpenRewrites:
    """``exact``: model -> weighted targets; ``generic``: targets for any other model."""

    exact: Mapping[str, Targets] = field(default_factory=dict)
    generic: Targets = ()

    def __bool__(self) -> bool:
        return bool(self.exact or self.generic)


def rewrites_from_settings(settings: EppSettings) -> FailOpenRewrites:
    """The table the EPP's model resolver holds for ``--resources``, narrowed to the pool the
    same way (``kvroute.app``)."""
    from kvroute.config.resources import load_resources
    from kvroute.requestcontrol.model_resolution import ModelResolver

    if not settings.resources:
        return FailOpenRewrites()
    resources = load_resources(list(settings.resources))
    if resources.pools:
        pool = resources.pool(settings.pool_name or None, settings.pool_namespace)
        resources = resources.for_pool(pool.name, pool.namespace)
    exact, generic = ModelResolver(resources).static_rewrites()
    return FailOpenRewrites(exact=exact, generic=generic)


def _lua_string(text: str) -> str:
    """A Lua string literal (decimal escapes for anything but plain printable ASCII)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if 32 <= byte < 127 and ch not in '"\\':
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua_targets(targets: Targets) -> str:
    # the inserted text is the JSON-escaped name (the body stays valid JSON)
    items = (f"{{{_lua_string(json.dumps(n)[1:-1])}, {int(w)}}}" for n, w in targets)
    return "{" + ", ".join(items) + "}"


_LUA = r"""
local EXACT = @EXACT@
local GENERIC = @GENERIC@

local function pick(targets)
  if #targets == 1 then return targets[1][1] end
  local total = 0
  for _, t in ipairs(targets) do total = total + t[2] end
  if total == 0 then return targets[math.random(#targets)][1] end
  local r = math.random(total)
  for _, t in ipairs(targets) do
    r = r - t[2]
    if r <= 0 then return t[1] end
  end
  return targets[#targets][1]
end

function envoy_on_request(handle)
  if handle:headers():get("@DEST@") ~= nil then return end -- the EPP routed it
  local body = handle:body()
  if body == nil then return end
  local s = body:getBytes(0, body:length())
  local a, b, name = string.find(s, '"model"%s*:%s*"([^"\\]*)"')
  if a == nil then return end
  local targets = EXACT[name] or GENERIC
  if targets == nil then return end
  local target = pick(targets)
  if target == name then return end
  local first = b - #name
  body:setBytes(string.sub(s, 1, first - 1) .. target .. string.sub(s, b))
  handle:headers():replace("@HEADER@", name .. " -> " .. target)
end
"""


def failopen_rewrite_filter(rewrites: FailOpenRewrites) -> dict[str, Any]:
    """The Lua HTTP filter (goes after ext_proc, before the router)."""
    exact = ", ".join(
        f"[{_lua_string(name)}] = {_lua_targets(targets)}"
        for name, targets in sorted(rewrites.exact.items())
        if targets
    )
    generic = _lua_targets(rewrites.generic) if rewrites.generic else "nil"
    code = (
        _LUA.replace("@EXACT@", "{" + exact + "}")
        .replace("@GENERIC@", generic)
        .replace("@DEST@", DESTINATION_HEADER)
        .replace("@HEADER@", REWRITE_HEADER)
    )
    return {
        "name": "kvroute.failopen_rewrite",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }
