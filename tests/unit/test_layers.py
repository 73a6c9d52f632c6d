"""The package's shape (issue 16): layers import downwards only, no module
imports a private name of another, and there are no import cycles.

Read from the source with `ast`, so nothing is imported. Imports under
`if TYPE_CHECKING:` count too: a cycle through type hints is still a cycle
for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cachefs

PACKAGE = Path(cachefs.__file__).parent

# Each layer, and the layers it may import (besides itself). The data path
# runs cli/daemon -> control -> fs -> cache -> remote; the kernel protocol
# sits beside it, below fs.
ALLOWED: dict[str, set[str]] = {
    "kernel": set(),
    "remote": set(),
    "migrations": set(),
    "runtime": set(),
    "localstore": set(),
    "cache": {"remote", "migrations"},
    "fs": {"kernel", "cache", "remote"},
    "control": {"fs", "cache", "remote", "kernel"},
    "maint": {"cache", "remote"},
    "daemon": {"control", "fs", "cache", "remote", "kernel", "runtime"},
    "benchmark": {"control", "kernel", "localstore", "runtime"},
    "cli": {"daemon", "maint", "control", "cache", "remote", "kernel", "runtime", "benchmark"},
}


# Modules any layer may use.
EVERYWHERE = {"lazy"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, names) for every import in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            found.append((target, names))
            # `from . import x` imports the module x.
            found += [(f"{target}.{n}", []) for n in names if is_module(f"{target}.{n}")]
    return [(t, n) for t, n in found if t == "cachefs" or t.startswith("cachefs.")]


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_layers_import_downwards_only() -> None:
    wrong = []
    for path in sources():
        here = layer_of(module_name(path))
        if here not in ALLOWED:
            continue
        for target, _ in imports_of(path):
            there = layer_of(target)
            if there and there != here and there not in ALLOWED[here] | EVERYWHERE:
                wrong.append(f"{module_name(path)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_layer_is_known() -> None:
    layers = {layer_of(module_name(p)) for p in sources()} - {""}
    assert layers <= set(ALLOWED) | EVERYWHERE, layers - set(ALLOWED)


def test_no_private_name_crosses_modules() -> None:
    wrong = []
    for path in sources():
        for target, names in imports_of(path):
            wrong += [f"{module_name(path)} imports {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = {module_name(p): p for p in sources()}
    graph = {m: {t for t, _ in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    # A package's __init__ importing its own modules is the front door, not a
    # cycle; a module importing its package's __init__ back would be.
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m + ".").startswith(t + ".") or t == m}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [m, t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)
