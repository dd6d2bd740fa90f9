import os
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads(tmp_path_factory, monkeypatch):
    # evaluation references are cached on disk (metrics.cache): never in the user's home from a test
    monkeypatch.setenv("E4E_CACHE", str(tmp_path_factory.mktemp("e4e_cache")))
    # no test leaks a tracking URI into the next (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI):
    # the value before the test (a module fixture's, or none) is put back after it
    before = os.environ.get("MLFLOW_TRACKING_URI")
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small kernels: no sync overhead on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
