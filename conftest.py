"""Shared by every test module: an offline environment and one private cache for the whole session.

All artefacts the tests build (the embedded-tiny task, Oracles, reference log-probs) go to a temporary
DRDO_CACHE, never to the repository's .cache/, and the embedded-tiny task is built at most once per session.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n 2` each worker (and every process it starts) uses one torch thread: two workers with a
    # thread per core each oversubscribe a 2-core machine (measured: twice the CPU time, slower than one process)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
_CACHE = tempfile.mkdtemp(prefix="drdo-test-cache-")
os.environ["DRDO_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_task():
    """The embedded-tiny task (3,000 tweets, vocab 512, a 50k-parameter pi_ref), built once (~10 s)."""
    import embedded
    return embedded.embedded_task(embedded.EMBEDDED_PRESETS["embedded-tiny"], log=lambda *_: None)


@pytest.fixture
def cache(tiny_task):
    """The session's private cache directory, with the embedded-tiny task built in it."""
    return os.environ["DRDO_CACHE"]


def pytest_configure(config):
    """The one custom marker: test_smollm2.py's real-model tests (about a minute; -m "not smollm2" skips them)."""
    config.addinivalue_line("markers", "smollm2: SmolLM2-135M end to end (about a minute; deselect with -m 'not smollm2')")
