"""The layers hold: core and stage modules under edgetl/ import neither ``benchmarks`` nor ``exporters``.

Only the top layer (the CLI, the recipes, the pipeline, the run report, the bundle package) may import every
layer. Imports inside functions count too: a lazy import is still a dependency. The exporters are reached from
below through the format table's ``"module:function"`` strings (:mod:`edgetl.formats`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGETL = ROOT / "edgetl"
TOP = {EDGETL / "cli", EDGETL / "recipe.py", EDGETL / "pipeline.py", EDGETL / "run_report.py", EDGETL / "package",
       EDGETL / "package.py"}
FORBIDDEN = ("benchmarks", "exporters")


def _core_modules() -> list[Path]:
    return sorted(p for p in EDGETL.rglob("*.py")
                  if not any(p == t or t in p.parents for t in TOP))


def _forbidden_imports(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] in FORBIDDEN]
    return found


def test_core_imports_neither_benchmarks_nor_exporters():
    modules = _core_modules()
    assert len(modules) > 30, "the walk found too few modules: is ROOT right?"
    bad = [line for p in modules for line in _forbidden_imports(p)]
    assert not bad, "core/stage modules import the layers above them:\n" + "\n".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from exporters.onnx import export_onnx\n    import benchmarks.harness\n")
    found = [line.split(" imports ")[1] for line in _forbidden_imports(probe, root=tmp_path)]
    assert found == ["exporters.onnx", "benchmarks.harness"]
