"""Render a Helm chart without ``helm``: a Go text/template subset, enough for our own chart.

No ``helm`` binary can be installed on our machines (no Debian package, no PyPI wheel ships one),
so the chart tests render ``deploy/charts/kvroute-epp`` with this and feed the result to
``kubectl apply --dry-run=client``; where ``helm`` is installed, a test checks that ``helm
template`` and this renderer produce the same objects.

Supported: ``{{ }}`` actions with ``{{-``/``-}}`` whitespace trimming; ``if``/``else if``/``else``,
``range`` (lists and maps, with ``else``), ``with``, ``define``/``include``; pipelines; terms
``.Values.a.b``, ``.Release.*``, ``.Chart.*``, ``$``, ``.``, ``(pipeline).field``, string/int/bool
literals; functions ``include toYaml nindent indent quote default int toString eq ne gt ge lt le
not and or index required trimSuffix printf`` (``%s``/``%d``/``%v`` only).
Not supported (the chart must not use them): variables (``$x :=``), ``tpl``, ``lookup``,
``.Files``, ``.Capabilities``, sprig beyond the list above, ``-`` inside numbers' text, comments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>-?\d+)|(?P<punct>[()|])'
    r"|(?P<root>\$(?:\.[A-Za-z_]\w*)*)|(?P<field>\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)"
    r"|(?P<ident>[A-Za-z_]\w*))"
)


class TemplateError(ValueError):
    pass


@dataclass
class _Node:
    kind: str  # text | expr | if | range | with
    text: str = ""
    expr: str = ""
    branches: list[tuple[str | None, list[_Node]]] = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", body), applying trim markers."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = src[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]], defines: dict[str, list[_Node]]) -> list[_Node]:
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, [])]
    define_name: list[str | None] = [None]
    for kind, body in tokens:
        current = stack[-1][1]
        if kind == "text":
            if body:
                current.append(_Node("text", text=body))
            continue
        word, _, rest = body.partition(" ")
        if body.startswith("/*"):
            continue
        if word in ("if", "range", "with"):
            node = _Node(word, branches=[(rest.strip(), [])])
            current.append(node)
            stack.append((node, node.branches[0][1]))
            define_name.append(None)
        elif word == "define":
            node = _Node("define", branches=[(None, [])])
            stack.append((node, node.branches[0][1]))
            define_name.append(rest.strip().strip('"'))
        elif word == "else":
            node = stack[-1][0]
            if node is None:
                raise TemplateError("else outside a block")
            cond = rest.strip()
            cond = cond[3:].strip() if cond.startswith("if ") else None
            node.branches.append((cond, []))
            stack[-1] = (node, node.branches[-1][1])
        elif word == "end":
            node, _ = stack.pop()
            name = define_name.pop()
            if node is None:
                raise TemplateError("unbalanced end")
            if name is not None:
                defines[name] = node.branches[0][1]
        else:
            current.append(_Node("expr", expr=body))
    if len(stack) != 1:
        raise TemplateError("unterminated block")
    return stack[0][1]


def truthy(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or (hasattr(v, "__len__") and len(v) == 0))


def to_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, as Helm's toYaml prints them."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def _to_yaml(v: Any) -> str:
    return yaml.dump(v, Dumper=_BlockDumper, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, s: str) -> str:
    return "\n".join((" " * n + line) if line else line for line in to_text(s).split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    it = iter(args)
    return re.sub(r"%[sdv]", lambda _m: to_text(next(it)), fmt)


def _required(msg: str, v: Any) -> Any:
    if not truthy(v):
        raise TemplateError(msg)
    return v


class Renderer:
    def __init__(self, defines: dict[str, list[_Node]]) -> None:
        self.defines = defines
        self.funcs: dict[str, Callable[..., Any]] = {
            "include": lambda name, ctx: self.render_nodes(self.defines[name], ctx, ctx),
            "toYaml": _to_yaml,
            "nindent": lambda n, s: "\n" + _indent(int(n), s),
            "indent": lambda n, s: _indent(int(n), s),
            "quote": lambda v: '"' + to_text(v).replace("\\", "\\\\").replace('"', '\\"') + '"',
            "default": lambda d, v=None: v if truthy(v) else d,
            "int": lambda v: int(float(v or 0)),
            "toString": to_text,
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
            "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b,
            "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b,
            "not": lambda v: not truthy(v),
            "and": lambda *vs: next((v for v in vs if not truthy(v)), vs[-1]),
            "or": lambda *vs: next((v for v in vs if truthy(v)), vs[-1]),
            "index": lambda coll, *keys: _index(coll, keys),
            "required": _required,
            "trimSuffix": lambda suffix, s: (
                s[: -len(suffix)] if suffix and s.endswith(suffix) else s
            ),
            "printf": _printf,
        }

    # -- expressions -------------------------------------------------------------------------
    def eval(self, expr: str, dot: Any, root: Any) -> Any:
        toks = [(m.lastgroup, m.group(m.lastgroup or "")) for m in _TOKEN.finditer(expr)]
        consumed = "".join(m.group(0) for m in _TOKEN.finditer(expr))
        if consumed.strip() != expr.strip():
            raise TemplateError(f"unsupported expression: {expr!r}")
        value, pos = self._pipeline(toks, 0, dot, root)
        if pos != len(toks):
            raise TemplateError(f"trailing tokens in {expr!r}")
        return value

    def _pipeline(
        self, toks: list[tuple[str | None, str]], pos: int, dot: Any, root: Any
    ) -> tuple[Any, int]:
        value: Any = None
        piped = False
        while True:
            value, pos = self._command(toks, pos, dot, root, value if piped else _NOTHING)
            if pos < len(toks) and toks[pos] == ("punct", "|"):
                pos += 1
                piped = True
                continue
            return value, pos

    def _command(
        self, toks: list[tuple[str | None, str]], pos: int, dot: Any, root: Any, piped: Any
    ) -> tuple[Any, int]:
        kind, text = toks[pos]
        if kind == "ident" and text not in ("true", "false", "nil"):
            fn = self.funcs.get(text)
            if fn is None:
                raise TemplateError(f"unknown function {text}")
            pos += 1
            args = []
            while pos < len(toks) and toks[pos] not in (("punct", "|"), ("punct", ")")):
                arg, pos = self._term(toks, pos, dot, root)
                args.append(arg)
            if piped is not _NOTHING:
                args.append(piped)
            return fn(*args), pos
        if piped is not _NOTHING:
            raise TemplateError("cannot pipe into a non-function")
        return self._term(toks, pos, dot, root)

    def _term(
        self, toks: list[tuple[str | None, str]], pos: int, dot: Any, root: Any
    ) -> tuple[Any, int]:
        kind, text = toks[pos]
        pos += 1
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape"), pos
        if kind == "num":
            return int(text), pos
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[text], pos
        if kind == "root":
            return _walk(root, text[1:]), pos
        if kind == "field":
            return _walk(dot, text), pos
        if text == "(":
            value, pos = self._pipeline(toks, pos, dot, root)
            if toks[pos] != ("punct", ")"):
                raise TemplateError("missing )")
            pos += 1
            if pos < len(toks) and toks[pos][0] == "field" and toks[pos][1] != ".":
                value = _walk(value, toks[pos][1])
                pos += 1
            return value, pos
        raise TemplateError(f"unexpected {text!r}")

    # -- nodes -------------------------------------------------------------------------------
    def render_nodes(self, nodes: list[_Node], dot: Any, root: Any) -> str:
        out: list[str] = []
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "expr":
                out.append(to_text(self.eval(n.expr, dot, root)))
            elif n.kind == "if":
                for cond, body in n.branches:
                    if cond is None or truthy(self.eval(cond, dot, root)):
                        out.append(self.render_nodes(body, dot, root))
                        break
            elif n.kind == "with":
                value = self.eval(n.branches[0][0] or "", dot, root)
                if truthy(value):
                    out.append(self.render_nodes(n.branches[0][1], value, root))
                elif len(n.branches) > 1:
                    out.append(self.render_nodes(n.branches[1][1], dot, root))
            elif n.kind == "range":
                coll = self.eval(n.branches[0][0] or "", dot, root)
                items = [coll[k] for k in sorted(coll)] if isinstance(coll, Mapping) else coll
                if truthy(items):
                    out.extend(self.render_nodes(n.branches[0][1], it, root) for it in items)
                elif len(n.branches) > 1:
                    out.append(self.render_nodes(n.branches[1][1], dot, root))
        return "".join(out)


_NOTHING = object()


def _walk(value: Any, path: str) -> Any:
    for part in (p for p in path.split(".") if p):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _index(coll: Any, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        coll = coll[k]
    return coll


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            else v
        )
    return out


def render_chart(
    chart_dir: Path,
    *,
    release: str = "release",
    namespace: str = "default",
    values: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Template file name → rendered text (like ``helm template``), defaults merged with
    ``values``. Files starting with ``_`` only contribute ``define``s."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    merged = deep_merge(yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}, values or {})
    root = {
        "Values": merged,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart.get("appVersion", ""),
        },
    }
    defines: dict[str, list[_Node]] = {}
    parsed: dict[str, list[_Node]] = {}
    for path in sorted((chart_dir / "templates").iterdir()):
        nodes = _parse(_lex(path.read_text()), defines)
        if not path.name.startswith("_") and path.name != "NOTES.txt":
            parsed[path.name] = nodes
    renderer = Renderer(defines)
    return {name: renderer.render_nodes(nodes, root, root) for name, nodes in parsed.items()}
