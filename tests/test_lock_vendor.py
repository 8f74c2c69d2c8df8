"""The lock check is not fooled by packages vendored inside setuptools (megatron-core's
import of torch's cpp_extension puts setuptools/_vendor on sys.path)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

from tests.lockfile import differences, installed, read_lock
from tests.test_lock import LOCK


@pytest.mark.skipif(bool(os.environ.get("MINITRON_UNLOCKED")), reason="unlocked environment")
def test_lock_holds_after_importing_megatron_core():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import megatron.core.datasets.indexed_dataset  # noqa: F401
    assert any(p.endswith("_vendor") for p in sys.path)  # the trap is set
    assert differences(read_lock(LOCK), installed()) == []
