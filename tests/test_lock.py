"""The install lock: this environment is the locked one, and the lock fits pyproject."""

from __future__ import annotations

import os

import pytest
import tomllib
import transformers
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfile import differences, freeze, installed, read_lock, same_version
from tests.test_cli import ROOT as ROOT_DIR

LOCK = ROOT_DIR / "constraints.txt"
UNLOCKED = bool(os.environ.get("MINITRON_UNLOCKED"))  # make test-latest / test-compat


@pytest.mark.skipif(UNLOCKED, reason="a deliberately unlocked environment")
def test_this_environment_is_exactly_the_lock():
    assert differences(read_lock(LOCK), installed()) == []


def test_every_locked_dependency_is_in_pyprojects_range():
    project = tomllib.loads((ROOT_DIR / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        req for extra in project["optional-dependencies"].values() for req in extra
    ]
    pins = read_lock(LOCK)
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not locked"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])


def test_lock_lines_and_local_versions(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(freeze({"torch": "2.13.0+cpu", "typing-extensions": "4.16.0"}))
    assert read_lock(path) == {"torch": "2.13.0", "typing-extensions": "4.16.0"}
    assert same_version("2.13.0", "2.13.0+cpu") and not same_version("2.13.0", "2.13.1")
    assert differences({"a": "1.0", "b": "2.0"}, {"b": "2.1", "c": "3.0"}) == [
        "a: locked 1.0, not installed",
        "b: locked 2.0, installed 2.1",
        "c: installed 3.0, not in the lock",
    ]
    path.write_text("torch>=2\n")
    with pytest.raises(ValueError, match="expected name==version"):
        read_lock(path)


@pytest.mark.skipif(
    not os.environ.get("MINITRON_EXPECT_TRANSFORMERS"), reason="only under make test-compat"
)
def test_compat_run_uses_the_swapped_in_transformers():
    assert transformers.__version__ == os.environ["MINITRON_EXPECT_TRANSFORMERS"]
