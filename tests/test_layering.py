"""Imports point down DESIGN.md's order ("Dependency rules"): an AST check over every module of ``bigmodels``.

Every ``import`` counts: at module level, inside functions (a lazy import is still a dependency) and under
``if TYPE_CHECKING:``, plus ``importlib.import_module("bigmodels...")`` with a literal name. Each module belongs
to a component (``bigmodels.<component>``; ``models._contract`` is its own), and the components sit in layers,
top to bottom:

    ==  layer          components                                         may import one another
    0   entry          bigmodels (the package facade), __main__, cli     yes
    1   stages         serve, bench, export, explain, compress,          yes, without a cycle between them
                       evaluate, train, convert (`bigmodels convert`)
    2   infer          infer (pipelines, decoding, embed, predict)
    3   tasks          tasks (batch contract, loss, metric sums)
    4   io             io (save/load any format: dispatches to interop by format, reads tokenizers from data)
    5   interop        interop (foreign formats; adapters found through a table)
    6   testing        testing (tiny presets, example inputs: for tests, users and any stage above)
    7   building       models (the families), data, metrics               no: independent of one another
    8   registry       registry
    9   contract       models._contract (the written model contract)
    10  nn             nn (reusable blocks; knows no model)
    11  foundation     config, _files                                     no
    12  errors         errors

A module may import its own component and any component of a lower layer. The one upward import allowed is in
``ALLOWED_UPWARD`` with its reason, and only inside a function. On top of the layers:

- ``models`` (families and contract) import nothing from interop, infer, train, data, tasks, evaluate or cli;
- ``compress``, ``explain``, ``export`` and ``serve`` import the contract and the registry, never a specific
  family (``bigmodels.models.<family>``) nor a family's interop adapter (``bigmodels.interop.hf_*``);
- ``tasks`` import only metrics, nn, errors, config and the model contract;
- ``metrics`` are pure functions: they import only errors;
- no two modules import each other, however indirectly (no import cycle, lazy ones included, and TYPE_CHECKING
  ones between components), and the components of a shared layer form no cycle either.

What is still wrong today is listed in ``KNOWN_VIOLATIONS`` with the area that removes it; the test fails on a
new violation and on a listed one that has gone, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import bigmodels

PACKAGE = Path(bigmodels.__file__).parent

# (components, whether components of the layer may import one another); top to bottom, as in the docstring
LAYERS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("__init__", "__main__", "cli"), True),
    (("serve", "bench", "export", "explain", "compress", "evaluate", "train", "convert"), True),
    (("infer",), False),
    (("tasks",), False),
    (("io",), False),
    (("interop",), False),
    (("testing",), False),
    (("models", "data", "metrics"), False),
    (("registry",), False),
    (("models._contract",), False),
    (("nn",), False),
    (("config", "_files"), False),
    (("errors",), False),
)

# (importer, imported) -> why; allowed only inside a function body
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("bigmodels.registry", "bigmodels.models"):
        "list_models/create_model import the families on first use so that every family has registered itself",
    ("bigmodels.io", "bigmodels.export.runner"):
        "load('x.onnx') hands an ONNX export to the ONNX Runtime runner, imported only when one is met",
    ("bigmodels.io", "bigmodels.compress"):
        "save/load/load_matching of a quantized or pruned model (a 'compress' record in its meta) hand its tensors "
        "and saved shapes to bigmodels.compress, imported only when one is met",
}

MODELS_NEVER_IMPORT = ("interop", "infer", "train", "data", "tasks", "evaluate", "cli")
ANY_MODEL_STAGES = ("compress", "explain", "export", "serve")
TASKS_MAY_IMPORT = ("tasks", "metrics", "nn", "errors", "config", "models._contract")
METRICS_MAY_IMPORT = ("metrics", "errors")

# What is still wrong, keyed as the test reports it, with the area that removes it. Remove an entry when its
# import goes: the test fails on a listed violation that no longer exists.
KNOWN_VIOLATIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function body
    type_checking: bool  # under `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def component(module: str) -> str:
    """``bigmodels.train.trainer`` -> ``train``; the package facade is ``__init__``; the contract stands alone."""
    if module == "bigmodels":
        return "__init__"
    parts = module.split(".")
    if parts[1:3] == ["models", "_contract"]:
        return "models._contract"
    return parts[1]


LAYER_OF = {c: i for i, (components, _) in enumerate(LAYERS) for c in components}
SHARED_LAYER = {i for i, (_, shared) in enumerate(LAYERS) if shared}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The bigmodels modules an ``import from`` reaches: ``from . import x`` is the submodule ``x`` when one exists."""
    is_package = MODULES[module].name == "__init__.py"
    if node.level:
        base = module.split(".")
        base = base[: len(base) - (node.level - (1 if is_package else 0))]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target != "bigmodels" and not target.startswith("bigmodels."):
        return []
    submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    others = [a for a in node.names if f"{target}.{a.name}" not in MODULES]
    return submodules + ([target] if others or not submodules else [])


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, tc: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy = True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, tc)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "bigmodels" or a.name.startswith("bigmodels.")]
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(module, node)
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args
              and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("bigmodels")):
            targets = [node.args[0].value]
        found.extend(Import(module, t, node.lineno, lazy, tc) for t in targets)
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, tc)

    visit(tree, False, False)
    return found


ALL_IMPORTS: list[Import] = [i for m in MODULES for i in imports_of(m) if i.imported != i.importer]


def _where(i: Import) -> str:
    kind = " (TYPE_CHECKING)" if i.type_checking else " (inside a function)" if i.lazy else ""
    return f"{MODULES[i.importer].relative_to(PACKAGE.parent)}:{i.line}{kind}"


def _edge_rules(i: Import) -> list[str]:
    """The rules the import ``i`` breaks (empty when it points down)."""
    a, b = component(i.importer), component(i.imported)
    broken = []
    if a != b:
        la, lb = LAYER_OF[a], LAYER_OF[b]
        allowed = i.lazy and not i.type_checking and (i.importer, i.imported) in ALLOWED_UPWARD
        if (la > lb or (la == lb and la not in SHARED_LAYER)) and not allowed:
            broken.append(f"{a} (layer {la}) imports {b} (layer {lb}): imports point down")
    sub = i.imported.split(".")[1:]
    if a in ("models", "models._contract") and sub[0] in MODELS_NEVER_IMPORT:
        broken.append(f"models import no {sub[0]}")
    if a in ANY_MODEL_STAGES and (
            (sub[0] == "models" and sub[1:] and sub[1] != "_contract")
            or (sub[0] == "interop" and sub[1:] and sub[1].startswith("hf_"))):
        broken.append(f"{a} acts on any model: it imports the contract and the registry, never a family")
    if a == "tasks" and b not in TASKS_MAY_IMPORT:
        broken.append(f"tasks import only {', '.join(TASKS_MAY_IMPORT[1:])}")
    if a == "metrics" and b not in METRICS_MAY_IMPORT:
        broken.append("metrics are pure functions: they import only errors")
    return broken


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def violations() -> dict[str, list[str]]:
    """Every broken rule: "importer -> imported" (an edge) or "cycle: a <-> b <-> ..." -> the reasons."""
    found: dict[str, list[str]] = defaultdict(list)
    for i in ALL_IMPORTS:
        for rule in _edge_rules(i):
            found[f"{i.importer} -> {i.imported}"].append(f"{_where(i)}: {rule}")
    graph: dict[str, set[str]] = defaultdict(set)
    for i in _cycle_edges():
        graph[i.importer].add(i.imported)
    components: dict[str, set[str]] = defaultdict(set)  # between the components of one shared layer
    for i in _cycle_edges():
        a, b = component(i.importer), component(i.imported)
        if a != b and LAYER_OF[a] == LAYER_OF[b] and LAYER_OF[a] in SHARED_LAYER:
            components[a].add(b)
    for scc in _cycles(graph):
        found[f"cycle: {' <-> '.join(scc)}"] = [f"{_where(i)} -> {i.imported}" for i in _cycle_edges()
                                               if i.importer in scc and i.imported in scc]
    for scc in _cycles(components):
        found[f"component cycle: {' <-> '.join(scc)}"] = [
            f"{_where(i)} -> {i.imported}" for i in _cycle_edges()
            if component(i.importer) in scc and component(i.imported) in scc
            and component(i.importer) != component(i.imported)]
    return dict(found)


def _cycle_edges() -> list[Import]:
    """The imports that count for cycles: all but the allowed upward ones and, inside one component, the
    TYPE_CHECKING-only ones (an annotation of a sibling module, e.g. a callback naming the Trainer it receives,
    is no runtime dependency and no layering question)."""
    return [i for i in ALL_IMPORTS if (i.importer, i.imported) not in ALLOWED_UPWARD
            and not (i.type_checking and component(i.importer) == component(i.imported))]


def test_every_module_has_a_place_in_the_layers():
    missing = sorted({component(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, f"components {missing} are in no layer of LAYERS: place them (and DESIGN.md says where)"
    assert all(component(i.imported) in LAYER_OF for i in ALL_IMPORTS)


def test_the_scan_sees_imports_of_every_kind():
    """The checker itself: module-level, lazy and TYPE_CHECKING imports, submodules reached by ``from . import``."""
    found = {(i.importer, i.imported): i for i in ALL_IMPORTS}
    assert len(MODULES) > 50 and len(ALL_IMPORTS) > 200
    assert not found[("bigmodels.train.trainer", "bigmodels.tasks")].lazy
    registry = found[("bigmodels.registry", "bigmodels.models")]
    assert registry.lazy and not registry.type_checking
    assert ("bigmodels.bench.report", "bigmodels.bench._plots") in found  # `from . import _plots`
    assert ("bigmodels.cli", "bigmodels") in found  # `from . import __version__` inside a function
    # the rules: an upward import, one between independent components, a family in a stage, a cycle
    def rules(importer, imported, lazy=False):
        return _edge_rules(Import(importer, imported, 1, lazy, False))

    assert rules("bigmodels.models.gpt", "bigmodels.infer.generate", lazy=True)
    assert rules("bigmodels.models.gpt", "bigmodels.data.tokenizers")
    assert rules("bigmodels.data.text", "bigmodels.metrics.text")
    assert rules("bigmodels.compress.fuse", "bigmodels.models.bert")
    assert not rules("bigmodels.compress.fuse", "bigmodels.models._contract")
    assert rules("bigmodels.tasks.base", "bigmodels.data.batching")
    assert rules("bigmodels.registry", "bigmodels.models")  # allowed only inside a function
    assert not rules("bigmodels.registry", "bigmodels.models", lazy=True)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down():
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not new, "imports that break DESIGN.md's dependency rules:\n" + "\n".join(
        f"  {k}\n" + "\n".join(f"      {r}" for r in v) for k, v in sorted(new.items()))


def test_known_violations_are_still_there():
    """A fixed violation leaves KNOWN_VIOLATIONS, so the list only shrinks."""
    gone = sorted(set(KNOWN_VIOLATIONS) - set(violations()))
    assert not gone, f"these are fixed: remove them from KNOWN_VIOLATIONS in tests/test_layering.py: {gone}"

