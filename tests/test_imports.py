"""Imports point one way (docs/ARCHITECTURE.md, "Layers"), and no module imports in a cycle.

Every `import toolkit...` / `from toolkit... import` statement counts, also those inside
functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "toolkit"

# Lowest first: a part may import only parts to its left (and itself).
LAYERS = ["utils", "external", "text", "model", "data", "lm", "score", "decode", "train", "cli"]
# The model core proper: imports nothing of the package but toolkit.utils.
MODEL_CORE = ["config", "presets", "wav2vec2", "masking", "checkpoint", "convert", "fairseq_io"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The toolkit modules a file imports (`from toolkit import x` counts as toolkit.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "toolkit"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "toolkit" \
                and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports_of(p, known) if d != m} for m, p in mods.items()}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "toolkit"


def test_parts_import_only_lower_layers():
    bad = []
    for mod, deps in graph().items():
        src = part(mod)
        if src not in LAYERS:
            continue
        for dep in deps:
            dst = part(dep)
            if dst == "toolkit" or dst == src:
                continue
            assert dst in LAYERS, f"{dep}: add its part to LAYERS (and to docs/ARCHITECTURE.md)"
            if LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{mod} -> {dep}")
    assert not bad, f"imports against the layer order {LAYERS}: {bad}"


def test_model_core_imports_only_utils():
    g = graph()
    for name in MODEL_CORE:
        deps = {d for d in g[f"toolkit.model.{name}"] if not d.startswith("toolkit.model")}
        assert deps <= {"toolkit.utils"}, f"toolkit.model.{name} imports {sorted(deps)}"


def test_no_module_imports_in_a_cycle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strongconnect(v)
    # a package importing its own submodules (__init__ re-exports) is not a cycle of ideas
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_checker_sees_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from toolkit.decode.search import make_searcher\n    import toolkit.lm.graph\n")
    assert imports_of(src, {"toolkit.decode.search", "toolkit.lm.graph"}) == {"toolkit.decode.search",
                                                                             "toolkit.lm.graph"}
