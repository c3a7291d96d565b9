"""The scripts of benchmarks/ that these tests exercise, as module fixtures (loader: tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def suite(benchmark_script):
    return benchmark_script("suite")


@pytest.fixture(scope="module")
def curve(benchmark_script):
    return benchmark_script("guidance_curve")
