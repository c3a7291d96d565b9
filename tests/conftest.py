import importlib.util
import os
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors run faster, and much faster when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load_benchmark(name: str):
    """benchmarks/<name>.py (the folder is not a package) as a fresh module object."""
    spec = importlib.util.spec_from_file_location(f"rmflow_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script():
    """A loader of the scripts in benchmarks/: benchmark_script("suite") is benchmarks/suite.py as a module."""
    return _load_benchmark
