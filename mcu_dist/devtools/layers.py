"""``python -m mcu_dist.devtools.layers``: the package's floors, checked on its real import graph.

Every import of ``mcu_dist`` modules (top-level, inside functions, under ``TYPE_CHECKING``) is an
edge. A module may import modules of its own floor or of floors below it, never above, and the
graph has no circle. Every module must be placed on a floor, so a new module says where it lives.
Exit status 1 and one line per violation otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent

# Lowest first. A name places the module of that name and every module under it ("mcu_dist" itself
# places only the package's __init__).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("config", ("mcu_dist.config", "mcu_dist.registry", "mcu_dist.recipes")),
    ("store", ("mcu_dist.store", "mcu_dist.fs", "mcu_dist.lease", "mcu_dist.guard", "mcu_dist.services")),
    ("rooms: data and models", ("mcu_dist.data", "mcu_dist.models", "mcu_dist.accel")),
    ("lab", ("mcu_dist.lab",)),
    ("path", ("mcu_dist.path",)),
    ("evaluate", ("mcu_dist.evaluate", "mcu_dist.plots", "mcu_dist.tracking")),
    ("train", ("mcu_dist.train",)),
    ("baselines", ("mcu_dist.baselines",)),
    (
        "one path, the references, the whole check",
        ("mcu_dist.pipeline", "mcu_dist.references", "mcu_dist.validation"),
    ),
    (
        "experiments",
        (
            "mcu_dist.experiment",
            "mcu_dist.api",
            "mcu_dist.tune_space",
            "mcu_dist.trial",
            "mcu_dist.baseline_trial",
            "mcu_dist.console",
            "mcu_dist.dispatch",
        ),
    ),
    (
        "entry points",
        (
            "mcu_dist.run",
            "mcu_dist.sweep",
            "mcu_dist.report",
            "mcu_dist.summarize",
            "mcu_dist.sweep_report",
            "mcu_dist.connect",
        ),
    ),
    (
        "drivers on the sweep",
        ("mcu_dist.ablate", "mcu_dist.tuned", "mcu_dist.bench", "mcu_dist.bench_pipeline"),
    ),
    ("the package", ("mcu_dist", "mcu_dist.devtools")),
]


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("mcu_dist")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mcu_dist"))
    return {m for m in found if m in known}


def floor_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, floor): the most specific placement wins
    for i, (_, names) in enumerate(FLOORS):
        for name in names:
            if module == name or (name != "mcu_dist" and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), i)
    return None if best is None else best[1]


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(p, known) - {m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(edges: dict[str, set[str]]) -> list[str]:
    problems = [f"{m}: on no floor; allowed: add it to FLOORS" for m in sorted(edges) if floor_of(m) is None]
    for m in sorted(edges):
        mine = floor_of(m)
        for target in sorted(edges[m]):
            theirs = floor_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(
                    f"{m} (floor {FLOORS[mine][0]!r}) imports {target} (floor {FLOORS[theirs][0]!r}): "
                    "an upward import"
                )
    problems += [f"import circle among: {', '.join(c)}" for c in cycles(edges)]
    return problems


def main() -> int:
    problems = violations(graph())
    for line in problems:
        print(line)
    if not problems:
        print(f"{len(graph())} modules on {len(FLOORS)} floors: no upward import, no circle")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
