"""The layer contract, read from the source: every import edge between kvroute's components.

Each module under ``src/`` is parsed with :mod:`ast` (no import is executed), and every
``import``/``from ... import`` is collected, including those inside functions and
``if TYPE_CHECKING:`` blocks. Each module belongs to the component (a package or module named in
:data:`LAYERS`) that is the longest prefix of its name; a component may import its own modules
and those of components in a strictly lower layer, nothing else, except the pairs in
:data:`ALLOWED`. Components in one layer are independent of each other. A module in no layer fails.

``kvroute_sim`` imports nothing of kvroute; ``kvroute_bench`` may import only the public modules in
:data:`BENCH_MAY_IMPORT`; ``kvroute`` never imports ``kvroute_bench``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = ("kvroute", "kvroute_sim", "kvroute_bench")

# Bottom to top. A component imports only from its own package and from lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Leaf helpers with no kvroute imports (host:port and backoff helpers arrive with arch-config).
    ("kvroute.errors", "kvroute.hostport", "kvroute.backoff"),
    # Plugin base (Plugin, TypedName) and the type-name registry. The registry loads the built-in
    # plugin modules by name (importlib, no import edge): it is the one dynamic upward reach.
    ("kvroute.plugins",),
    # The framework interfaces: request/usage types, Endpoint, the scheduling and hook protocols.
    ("kvroute.framework",),
    # CRD models; OpenAI wire formats (sans-IO parsers).
    ("kvroute.api", "kvroute.protocol"),
    # The EndpointPickerConfig/resource loaders, then the process settings (flags, env), which
    # read config's parsers.
    ("kvroute.config",),
    ("kvroute.settings",),
    ("kvroute.datastore",),
    # The plugin capability protocols that name the datastore (attach, listen), from arch-wiring.
    ("kvroute.plugins.lifecycle",),
    # Sources that feed the datastore: metric scrapers/KV events, and Kubernetes watches.
    ("kvroute.datalayer", "kvroute.k8s"),
    # Active-active replica sync: the sans-IO core and its ZeroMQ shell (membership reads k8s).
    ("kvroute.replicasync",),
    ("kvroute.scheduling",),
    # Flow control (admission queues, by priority band), run by the director before scheduling.
    ("kvroute.flowcontrol",),
    ("kvroute.requestcontrol",),
    # Prometheus collectors, fed by the director backend.
    ("kvroute.observability",),
    ("kvroute.extproc",),
    # The P/D sidecar beside a decode server: its own sans-IO core and aiohttp shell.
    ("kvroute.sidecar",),
    # The one function that builds the EPP's object graph from settings and config, then the
    # composition root that runs it, then its shells.
    ("kvroute.wiring",),
    ("kvroute.app",),
    ("kvroute.gateway",),
    # The public API: for plugin authors (sdk) and for programs that embed the scheduler (embed).
    ("kvroute.sdk", "kvroute.embed"),
    ("kvroute.commands",),
    ("kvroute.cli",),
)

# Modules the benchmark may import from kvroute: the public API, nothing else. It may also name
# the ``kvroute`` command's module, to run it as a child process (``python -m kvroute.cli sim``).
BENCH_MAY_IMPORT: frozenset[str] = frozenset({"kvroute.sdk", "kvroute.embed"})
BENCH_MAY_RUN: frozenset[str] = frozenset({"kvroute.cli"})

# Known violations owned by another change. Each is (importer component, imported component).
# Removed when arch-config lands (it moves the duration parser below config and the extproc
# defaults out of settings' way).
ALLOWED: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Edge:
    path: Path
    line: int
    importer: str  # dotted module name
    imported: str  # dotted module name as written (resolved for relative imports)
    by_name: bool = False  # a string naming the module (importlib, a dispatch table)
    candidate: bool = False  # ``pkg.Name`` of ``from pkg import Name``: kept if it is a module

    def __str__(self) -> str:
        verb = "names" if self.by_name else "imports"
        return f"{self.path}:{self.line}: {self.importer} {verb} {self.imported}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    drop = level - 1 if is_package else level
    base = base[: len(base) - drop]
    return ".".join([*base, module] if module else base)


# A string that is a dotted path into one of our packages ("kvroute_bench.cli", "pkg.mod:attr"):
# how importlib dispatch tables and entry-point-like references reach a module without ``import``.
_MODULE_STRING = re.compile(r"(kvroute|kvroute_sim|kvroute_bench)(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")


def imports_of(root: Path, path: Path) -> Iterable[Edge]:
    """Every import in one file, at any depth (functions, ``TYPE_CHECKING`` blocks, try/except),
    and every string naming a module of our packages (checked for the package boundaries)."""
    importer = module_name(root, path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(path, node.lineno, importer, alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(importer, is_package, node.level, node.module)
            # ``from pkg import sub`` imports the submodule pkg.sub when it is one (the candidates
            # that name no module are pruned later); they come first, so a report names them.
            for alias in node.names:
                yield Edge(path, node.lineno, importer, f"{target}.{alias.name}", candidate=True)
            yield Edge(path, node.lineno, importer, target)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "." in node.value
            and _MODULE_STRING.fullmatch(node.value)
        ):
            yield Edge(path, node.lineno, importer, node.value.split(":")[0], by_name=True)


def all_imports(root: Path, packages: Sequence[str] = PACKAGES) -> list[Edge]:
    edges: list[Edge] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            edges.extend(imports_of(root, path))
    return edges


def component(module: str, components: Iterable[str]) -> str | None:
    """The longest component that is ``module`` or a package above it."""
    best: str | None = None
    for comp in components:
        if (module == comp or module.startswith(comp + ".")) and (
            best is None or len(comp) > len(best)
        ):
            best = comp
    return best


def violations(
    edges: Iterable[Edge],
    layers: Sequence[Sequence[str]] = LAYERS,
    *,
    public: frozenset[str] = BENCH_MAY_IMPORT,
    allowed: frozenset[tuple[str, str]] = ALLOWED,
) -> list[str]:
    """Each forbidden edge as ``file:line: <importer> imports <imported> (<rule>)``."""
    rank: dict[str, int] = {comp: i for i, layer in enumerate(layers) for comp in layer}
    found: list[str] = []
    seen: set[tuple[Path, int]] = set()  # one report per import statement
    for edge in edges:
        src_pkg = edge.importer.split(".")[0]
        dst_pkg = edge.imported.split(".")[0]
        if dst_pkg not in PACKAGES:
            continue  # stdlib / third party
        rule: str | None = None
        if edge.imported == "kvroute":
            continue  # the package root holds only ``__version__``
        if edge.by_name and src_pkg == dst_pkg:
            continue  # within a package, a module path in a string is no layer edge
        if src_pkg == "kvroute_sim" and dst_pkg != "kvroute_sim":
            rule = "kvroute_sim imports nothing of kvroute or the bench"
        elif src_pkg == "kvroute" and dst_pkg == "kvroute_bench":
            rule = "kvroute never imports kvroute_bench"
        elif src_pkg == "kvroute_bench" and dst_pkg == "kvroute":
            reach = public | BENCH_MAY_RUN if edge.by_name else public
            if not any(edge.imported == m or edge.imported.startswith(m + ".") for m in reach):
                rule = f"kvroute_bench may import only {sorted(public)}"
        elif src_pkg == "kvroute" and dst_pkg == "kvroute":
            src = component(edge.importer, rank)
            dst = component(edge.imported, rank)
            if src is None:
                rule = f"{edge.importer} is in no layer (add it to LAYERS)"
            elif dst is not None and src != dst and (src, dst) not in allowed:
                if rank[dst] == rank[src]:
                    rule = f"{src} and {dst} are independent (same layer)"
                elif rank[dst] > rank[src]:
                    rule = f"{src} imports upward into {dst}: layer {rank[src]} < {rank[dst]}"
        if rule is not None and (edge.path, edge.line) not in seen:
            seen.add((edge.path, edge.line))
            found.append(f"{edge} ({rule})")
    return found


def _prune_attribute_edges(edges: list[Edge], root: Path) -> list[Edge]:
    """Drop the ``pkg.Name`` candidates of ``from pkg import Name`` when Name is no module."""
    modules = {module_name(root, p) for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    return [e for e in edges if not e.candidate or e.imported in modules]


def check_tree(root: Path, *, allowed: frozenset[tuple[str, str]] = ALLOWED) -> list[str]:
    """Every forbidden import in the ``kvroute*`` packages under ``root``."""
    return violations(_prune_attribute_edges(all_imports(root), root), allowed=allowed)


def test_every_module_is_in_a_layer() -> None:
    rank = {comp for layer in LAYERS for comp in layer}
    stray = [
        module_name(SRC, p)
        for p in sorted((SRC / "kvroute").rglob("*.py"))
        if module_name(SRC, p) != "kvroute" and component(module_name(SRC, p), rank) is None
    ]
    assert stray == [], f"modules in no layer of LAYERS: {stray}"


def test_layer_contract_holds() -> None:
    found = check_tree(SRC)
    assert found == [], "forbidden imports:\n" + "\n".join(found)


def test_allowlist_is_still_needed() -> None:
    """An allowlisted edge that no longer occurs must be deleted from ALLOWED."""
    edges = _prune_attribute_edges(all_imports(SRC), SRC)
    unused = [pair for pair in ALLOWED if not violations(edges, allowed=ALLOWED - {pair})]
    assert unused == [], f"ALLOWED entries no longer needed: {unused}"


def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


_CLEAN_TREE = {
    "kvroute/__init__.py": "",
    "kvroute/framework/__init__.py": "",
    "kvroute/framework/request.py": "from dataclasses import dataclass\n",
    "kvroute/scheduling/__init__.py": "",
    "kvroute/scheduling/scheduler.py": "from kvroute.framework.request import x\n",
    "kvroute/requestcontrol/__init__.py": "",
    "kvroute/requestcontrol/director.py": "from kvroute.scheduling import scheduler\n",
    "kvroute/sdk.py": "from kvroute.scheduling.scheduler import Scheduler\n",
    "kvroute_sim/__init__.py": "",
    "kvroute_bench/__init__.py": "",
    "kvroute_bench/run.py": "from kvroute.sdk import Scheduler\nimport kvroute_sim\n",
}


def test_check_passes_on_a_clean_tree(tmp_path: Path) -> None:
    _write(tmp_path, _CLEAN_TREE)
    assert check_tree(tmp_path, allowed=frozenset()) == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        (
            "kvroute/scheduling/plugin.py",
            "def f():\n    from kvroute.requestcontrol.director import D\n",
            "kvroute/scheduling/plugin.py:2: kvroute.scheduling.plugin imports "
            "kvroute.requestcontrol.director (kvroute.scheduling imports upward into "
            "kvroute.requestcontrol: layer",
        ),
        (
            "kvroute/framework/hooks.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..scheduling import scheduler\n",
            "kvroute/framework/hooks.py:3: kvroute.framework.hooks imports "
            "kvroute.scheduling.scheduler",
        ),
        (
            "kvroute/demo.py",
            "import kvroute_bench.run\n",
            "kvroute never imports kvroute_bench",
        ),
        (
            "kvroute_sim/engine.py",
            "from kvroute.framework import request\n",
            "kvroute_sim imports nothing of kvroute",
        ),
        (
            "kvroute_bench/inner.py",
            "from kvroute.scheduling.scheduler import Scheduler\n",
            "kvroute_bench/inner.py:1: kvroute_bench.inner imports kvroute.scheduling.scheduler "
            "(kvroute_bench may import only",
        ),
        (
            "kvroute/cli.py",
            'COMMANDS = {"bench": ("kvroute_bench.cli", "benchmarks")}\n',
            "kvroute/cli.py:1: kvroute.cli names kvroute_bench.cli (kvroute never imports",
        ),
        (
            "kvroute/newthing/__init__.py",
            "from kvroute.framework import request\n",
            "kvroute.newthing is in no layer",
        ),
    ],
)
def test_check_fails_on_a_wrong_import(tmp_path: Path, rel: str, text: str, expected: str) -> None:
    _write(tmp_path, {**_CLEAN_TREE, rel: text})
    found = check_tree(tmp_path, allowed=frozenset())
    assert len(found) == 1, found
    assert expected in found[0].replace(str(tmp_path) + "/", "")


def test_allowlist_silences_only_its_edge(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            **_CLEAN_TREE,
            "kvroute/framework/bad.py": "from kvroute.scheduling.scheduler import S\n",
            "kvroute/framework/worse.py": "from kvroute.requestcontrol.director import D\n",
        },
    )
    found = check_tree(tmp_path, allowed=frozenset({("kvroute.framework", "kvroute.scheduling")}))
    assert len(found) == 1
    assert "worse.py:1" in found[0]
