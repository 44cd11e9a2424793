"""The stages import one way (cli -> serve -> presentation -> explore -> query/index/ingest -> store -> shared modules)
and there is no import circle, imports inside functions counted."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "actdb"
SHARED = {"actdb.errors", "actdb.settings", "actdb.grammar", "actdb.devices", "actdb.files", "actdb._version",
          "actdb.cluster", "actdb.jit", "actdb.faults"}
# stage -> the stages it may import (besides itself and the shared modules)
ALLOWED = {
    "shared": set(),
    "store": set(),
    "cofire": {"store"},                  # co-firing: counted from the masks
    "index": {"store", "cofire"},         # the index keeps every neuron's top co-firing neighbours
    "query": {"store", "cofire"},         # the handle and SQL ask one neuron against all
    "ingest": {"index", "store"},         # an ingest builds the index at its end
    "explore": {"query", "store"},        # what is shown about a store, layer, neuron, token: the facts
    "presentation": {"explore", "query", "store"},   # figures, report and card draw query results and facts
    # the explorer renders the facts; ingest only inside the probe, which loads the model lazily
    "serve": {"explore", "presentation", "query", "store", "ingest"},
    "top": {"ingest", "index", "query", "explore", "presentation", "serve", "store", "cofire"},   # actdb/__init__.py, cli.py
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(mod: str) -> str:
    if mod in SHARED:
        return "shared"
    parts = mod.split(".")
    if len(parts) == 1 or mod == "actdb.cli":
        return "top"
    return parts[1]


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every actdb module `path` imports, anywhere in the file (relative imports resolved;
    `from pkg import name` counts `pkg.name` when that is a module)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            # `from .. import faults` imports the module actdb.faults, not the package root
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
        else:
            continue
        for n in names:
            # the deepest actdb module named (a package import runs its __init__ too)
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != mod:
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_stages_import_one_way():
    bad = []
    for mod, deps in graph().items():
        s = stage(mod)
        for d in deps:
            t = stage(d)
            if t not in ("shared", s) and t not in ALLOWED[s] and d != "actdb":
                bad.append(f"{mod} ({s}) imports {d} ({t})")
            if d == "actdb" and s != "top":
                bad.append(f"{mod} imports the package root (name the module instead)")
    assert not bad, "\n".join(bad)


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_stage_is_a_subpackage():
    for s in ("ingest", "store", "index", "query", "explore", "presentation", "serve", "cofire"):
        assert (ROOT / s / "__init__.py").exists()
    flat = sorted(p.name for p in ROOT.glob("*.py"))
    assert flat == ["__init__.py", "_version.py", "cli.py", "cluster.py", "devices.py", "errors.py", "faults.py",
                    "files.py", "grammar.py", "jit.py", "settings.py"], flat



def test_the_server_renders_facts_only():
    """actdb/serve/ asks actdb.explore for every fact: no SQL, no array or frame library, no
    private attribute of another object read (the probe alone hands the model's fires, an array,
    to explore). Its page module stays small."""
    import re

    bad = []
    for path in sorted((ROOT / "serve").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    lib = name.split(".")[0]
                    if lib in ("numpy", "polars", "duckdb", "pyarrow") and not (lib == "numpy" and path.name == "probe.py"):
                        bad.append(f"{path.name}:{node.lineno} imports {name}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.search(r"\bSELECT\b[\s\S]*\bFROM\b", node.value):
                bad.append(f"{path.name}:{node.lineno} holds SQL: {node.value[:40]!r}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    assert not bad, "\n".join(bad)
    assert len((ROOT / "serve" / "pages.py").read_text(encoding="utf-8").splitlines()) <= 300
