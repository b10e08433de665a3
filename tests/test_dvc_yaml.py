"""dvc.yaml declares, for every stage, exactly the fer/ modules its script imports (directly or
not): a missing one would let a code change go unnoticed, an extra one would rerun the stage for
code it never runs."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

STAGE_SCRIPTS = {"prepare": "prepare", "train_cnn4": "train", "train_cnn3": "train", "evaluate": "evaluate",
                 "visualize": "visualize", "report": "report"}


def _module_file(name: str) -> Path | None:
    for candidate in (ROOT / f"{name.replace('.', '/')}.py", ROOT / name.replace(".", "/") / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fer":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fer"}
    return found


def import_closure(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _imported_modules(todo.pop()):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                file = _module_file(".".join(parts[:i]))
                if file and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return {str(p.relative_to(ROOT)) for p in seen}


@pytest.mark.parametrize("stage", list(STAGE_SCRIPTS))
def test_stage_declares_its_imports(stage: str) -> None:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    declared: set[str] = set()
    for dep in spec["deps"]:
        path = ROOT / dep
        declared |= {str(p.relative_to(ROOT)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
    script = f"stages/{STAGE_SCRIPTS[stage]}.py"
    assert script in declared
    closure = import_closure(ROOT / script)
    assert closure <= declared, f"undeclared: {sorted(closure - declared)}"
    code = {d for d in declared if d.endswith(".py") and d != script}
    assert code <= closure, f"declared but never imported: {sorted(code - closure)}"
