"""The scripts of benchmarks/ (not a package) as module fixtures."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    """benchmarks/<name>.py as a fresh module object."""
    spec = importlib.util.spec_from_file_location(f"rmflow_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return _load("suite")


@pytest.fixture(scope="module")
def curve():
    return _load("guidance_curve")
