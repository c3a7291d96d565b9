"""The package's layers, checked on the source: a module may import only from its own layer or from below.

    errors                              (a leaf)
    flow, nets                          the method and the networks: nothing of rmflow but themselves (and errors)
    tasks                               data, metrics, models of one modality: flow, nets, errors
    config                              the typed config: tasks (the registered sections), errors
    train, evaluate, compare, bench,
    cli, tools                          drivers: anything
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "rmflow"
ALLOWED = {
    "errors": set(),
    "flow": {"flow", "errors"},
    "nets": {"nets", "errors"},
    "tasks": {"tasks", "flow", "nets", "errors"},
    "config": {"config", "tasks", "errors"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rmflow_imports(path: Path, root: Path = SRC) -> set[str]:
    """Every rmflow module that `path` (a file under the package folder `root`) imports, at module level or
    inside functions."""
    package = ".".join(("rmflow",) + path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("rmflow"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rmflow")}
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SRC)) for p in MODULES])
def test_imports_follow_the_layers(path):
    own = layer(".".join(("rmflow",) + path.relative_to(SRC).with_suffix("").parts))
    if own not in ALLOWED:
        return   # a driver: may import anything
    bad = sorted(m for m in rmflow_imports(path) if layer(m) not in ALLOWED[own] | {""} or m == "rmflow")
    assert not bad, f"{path.relative_to(SRC)} ({own}) imports {bad}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A check that cannot fail is no check: an upward import hidden in a function is found and resolved."""
    (tmp_path / "flow").mkdir()
    probe = tmp_path / "flow" / "bad.py"
    probe.write_text("from .model import RMFlow\n\n\ndef f():\n    from ..train.trainer import Trainer\n")
    found = rmflow_imports(probe, tmp_path)
    assert found == {"rmflow.flow.model", "rmflow.train.trainer"}
    assert layer("rmflow.train.trainer") not in ALLOWED["flow"]


TASK_PACKAGES = sorted(p.name for p in (SRC / "tasks").iterdir() if (p / "__init__.py").exists())


@pytest.mark.parametrize("path", [p for p in MODULES if p.parent.parent == SRC / "tasks"],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_a_task_does_not_reach_into_another_task(path):
    """Shared task code lives in tasks/*.py (base, tables, anyd_metrics, lora); a task package imports no other."""
    own = path.parent.name
    bad = sorted(m for m in rmflow_imports(path)
                 if m.split(".")[:2] == ["rmflow", "tasks"] and len(m.split(".")) > 2
                 and m.split(".")[2] in TASK_PACKAGES and m.split(".")[2] != own)
    assert not bad, f"{path.relative_to(SRC)} imports another task: {bad}"
