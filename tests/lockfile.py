"""The install lock (``constraints.txt``): check, compare and write it.

``make install`` passes the lock to pip with ``-c`` and then runs ``check``, so a
fresh machine has exactly the versions the suite passed with, or the install
stops naming what differs. ``make test-latest`` prints ``diff`` against the newest
allowed versions; ``make lock`` runs ``write`` from that environment.

    python -m tests.lockfile check|diff|write constraints.txt
"""

from __future__ import annotations

import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

#: Installed by venv / pip themselves, or the project: never pinned (as pip freeze).
UNPINNED = {"pip", "setuptools", "wheel", "minitron"}
HEADER = """\
# The install lock: every package `make install` puts in .venv, as the suite last
# passed with it (Python 3.11, Linux x86_64, torch's CPU wheel). Supported ranges
# are in pyproject.toml. Refresh with `make lock`, then commit with `make test` green.
"""


def read_lock(path: str | Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file of ``name==version`` lines."""
    pins = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: expected name==version, got {raw!r}")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of the distributions installed in this environment.

    Only the environment's own site-packages are read, not everything on ``sys.path``:
    importing setuptools (torch's cpp_extension does, and megatron-core imports that)
    appends ``setuptools/_vendor`` to ``sys.path``, whose vendored copies are not
    installed packages.
    """
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = {}
    for dist in metadata.distributions(path=paths):
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name not in UNPINNED:
            found[name] = dist.version
    return found


def same_version(locked: str, have: str) -> bool:
    """Equal releases, ignoring a local tag (``2.13.0`` is ``2.13.0+cpu``)."""
    return Version(locked).public == Version(have).public


def differences(pins: dict[str, str], env: dict[str, str]) -> list[str]:
    """One line per package that is missing, extra, or at another version."""
    lines = []
    for name in sorted(pins.keys() | env.keys()):
        locked, have = pins.get(name), env.get(name)
        if have is None:
            lines.append(f"{name}: locked {locked}, not installed")
        elif locked is None:
            lines.append(f"{name}: installed {have}, not in the lock")
        elif not same_version(locked, have):
            lines.append(f"{name}: locked {locked}, installed {have}")
    return lines


def freeze(env: dict[str, str]) -> str:
    """The lock file's text for ``env`` (local version tags dropped)."""
    body = "".join(f"{name}=={Version(v).public}\n" for name, v in sorted(env.items()))
    return HEADER + body


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("check", "diff", "write"):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    command, path = argv
    if command == "write":
        Path(path).write_text(freeze(installed()))
        print(f"wrote {path}")
        return 0
    lines = differences(read_lock(path), installed())
    if command == "diff":
        print("\n".join(lines) if lines else f"the newest allowed versions are {path}'s")
        return 0
    if lines:
        print(f"this environment does not match {path}:", *lines, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
