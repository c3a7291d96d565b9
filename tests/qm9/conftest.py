"""Shared fixtures: QM9 parsed once per session from the installed qm9pack into a temporary cache folder."""
import importlib.util

import pytest


@pytest.fixture(scope="session")
def qm9_cache(tmp_path_factory):
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed (pip install 'rmflow[qm9]')")
    return tmp_path_factory.mktemp("qm9cache")


@pytest.fixture(scope="session")
def qm9_arrays(qm9_cache):
    from rmflow.tasks.qm9.data import load_arrays
    return load_arrays(qm9_cache)
