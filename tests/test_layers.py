"""The house reads top-down: every module imports only from its own layer or the ones below, and
no two packages import each other (no circles), lazy imports included (AST, no import needed).

    cli -> applications (run, eval, export, weights) -> pipeline -> predictor (Detector)
        -> engines -> models -> io, render -> structures, config, errors
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

LAYERS = [
    ("detector.errors", "detector.categories", "detector.resources"),
    ("detector.config", "detector.structures", "detector.stats"),  # stats: per-stage timings (numpy only)
    ("detector.distributed",),  # the one home of process-group helpers (torchrun)
    ("detector.io.base", "detector.io.types"),
    ("detector.io", "detector.render"),  # sources, sinks, the live view; annotators: no model code
    ("detector.models",),  # registry, builders, weights
    ("detector.engines",),  # torch, OpenVINO, ONNX Runtime; export and its cache
    ("detector.predictor",),  # Detector: frames in, Detections out, whatever engine
    ("detector.pipeline",),
    ("detector.planning",),  # where a run writes, decided before any work
    (
        "detector.runner",
        "detector.eval",
        "detector.folder_run",
        "detector.multi_run",
        "detector.ray_run",
    ),  # applications
    ("detector.cli", "detector.__main__"),
]


def layer_of(module: str) -> int:
    best = (-1, -1)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    assert best[1] >= 0, f"{module} is in no layer"
    return best[1]


def imports_of(path: Path, module: str) -> set[str]:
    """Every detector module imported anywhere in the file (lazy imports included)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("detector"):
                found.add(target)
                found.update(
                    f"{target}.{a.name}"
                    for a in node.names
                    if (ROOT / (target + "." + a.name).replace(".", "/")).with_suffix(".py").exists()
                )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("detector"))
    return found


def modules() -> dict[str, set[str]]:
    """module -> the detector modules it imports (the package's lazy ``__init__`` left out: it names
    everything by design)."""
    out = {}
    for path in sorted((ROOT / "detector").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module != "detector":
            out[module] = {t for t in imports_of(path, module) if t != "detector"}
    return out


def test_no_module_imports_one_above_its_layer() -> None:
    bad = [f"{m} imports {t}" for m, targets in modules().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert bad == []


def test_no_two_packages_import_each_other() -> None:
    """Circles between rooms (``detector.models`` <-> ``detector.engines`` was one) are refused even
    within a layer; inside one package, modules may lean on each other."""

    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for m, targets in modules().items():
        for t in targets:
            if room(t) != room(m):
                edges.setdefault(room(m), set()).add(room(t))
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [node])
    assert cycles == []


def test_the_layer_test_catches_a_violation() -> None:
    """The check itself can fail: an engine importing the predictor sits above its layer."""
    assert layer_of("detector.predictor") > layer_of("detector.engines.load")
    assert layer_of("detector.models.build") < layer_of("detector.engines.export") < layer_of("detector.pipeline.loop")
