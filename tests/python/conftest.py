"""The dsattn test suite's shared setup.

dsattn is imported here, at collection: a module that is missing or fails to load fails the run
instead of skipping tests. With DSATTN_PYTHON_DIR set (ctest sets it to the build tree's python/
folder), the imported package must be that one, not an installed copy.
"""

import os
import zlib

import numpy as np
import pytest

import dsattn


def pytest_configure(config):
    expected = os.environ.get("DSATTN_PYTHON_DIR")
    if expected:
        where = os.path.realpath(os.path.dirname(dsattn.__file__))
        want = os.path.realpath(os.path.join(expected, "dsattn"))
        if where != want:
            raise pytest.UsageError(f"dsattn was imported from {where}, expected {want}")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh inputs per test, the same on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
