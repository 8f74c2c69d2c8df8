"""Whether this system can contain generated programs, and the command that runs one.

Contained (the default), a program runs under ``_jail.py``: its own user, mount,
PID and network namespaces, a read-only root holding only the system and its
Python but a throwaway tmpfs, no capabilities, seccomp against ``execve``, rlimits,
and the whole PID namespace killed at the time limit. Whether the kernel lets this
user do that is probed once per process by running an empty program that way.
Where it cannot, code tasks are refused unless the user gives up containment with
``--unsafe-code-execution-without-sandbox``; programs then run under
``_sandbox.py`` alone (rlimits and an audit hook).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from minitron.errors import MinitronError, first_line

HERE = Path(__file__).parent
JAIL = HERE / "_jail.py"
RUNNER = HERE / "_sandbox.py"
UNSAFE_FLAG = "--unsafe-code-execution-without-sandbox"
SETUP_FAILED = 125  # _jail.py: the sandbox could not be set up, nothing ran
TIMED_OUT = 124  # _jail.py: killed at the time limit, with everything it started
SETUP_PREFIX = "minitron sandbox setup: "


def program_command(
    memory_bytes: int, cpu_seconds: int, processes: int, timeout: float, contained: bool = True
) -> list[str]:
    """The argv that runs ``program.py`` of the working folder, contained or not."""
    limits = [str(memory_bytes), str(cpu_seconds), str(processes)]
    if contained:
        return [sys.executable, "-I", "-S", "-B", str(JAIL), *limits, f"{timeout:g}"]
    return [sys.executable, "-I", "-S", "-B", str(RUNNER), *limits]


def program_env(folder: str) -> dict[str, str]:
    """The whole environment of a program: its folder as home and temporary folder."""
    return {"HOME": folder, "TMPDIR": folder, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


@functools.lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """Why programs cannot be contained here (one line), or None when they can.

    Runs an empty program in the sandbox once per process and caches the answer.
    """
    with tempfile.TemporaryDirectory(prefix="minitron-probe-") as folder:
        Path(folder, "program.py").write_text("pass\n", encoding="utf-8")
        command = program_command(2**30, 5, 8, 20.0)
        try:
            probe = subprocess.run(
                command, cwd=folder, env=program_env(folder), stdin=subprocess.DEVNULL,
                capture_output=True, timeout=30, start_new_session=True,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            return first_line(err)
    if probe.returncode == 0:
        return None
    lines = probe.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].removeprefix(SETUP_PREFIX) if lines else f"exit code {probe.returncode}"


def require_sandbox() -> None:
    """Raise, in one line that says why, unless programs can be contained here.

    Raises:
        MinitronError: If this system cannot create the sandbox's namespaces.
    """
    problem = sandbox_problem()
    if problem is not None:
        raise MinitronError(
            f"code tasks run generated programs in an OS sandbox, and this system cannot "
            f"create one ({problem}); pass {UNSAFE_FLAG} to run them with only rlimits and "
            "an audit hook (see docs/eval.md)"
        )
