"""Scoring generated programs (MBPP-style code tasks) by running them, sandboxed.

lm-eval's own code metric loads ``code_eval`` from the Hugging Face Hub, which
fails offline; minitron scores pass@k itself. Each program plus its tests runs
in a fresh Python process:

- in a throwaway working folder (also its ``HOME`` and ``TMPDIR``), with an
  empty environment and an isolated interpreter (``python -I -S -B``);
- with a wall-clock time limit (the process group is killed) and resource
  limits: CPU seconds, address space, file size, no core dumps;
- without network: in a new user + network namespace (``unshare -rn``) when the
  system allows it, and always behind an audit hook that refuses sockets;
- behind an audit hook that refuses writes outside the working folder, new
  processes and ctypes (see ``minitron/eval/_sandbox.py``).

Nothing runs unless code execution was allowed (``allow_code_execution``);
docs/eval.md says what this does and does not protect against.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from minitron.errors import MinitronError

RUNNER = Path(__file__).with_name("_sandbox.py")
_allowed: list[bool] = []  # non-empty while code execution is allowed


@dataclass(frozen=True)
class Limits:
    """Per-program limits.

    Attributes:
        timeout: Wall-clock seconds before the process group is killed.
        memory_mb: Address-space limit of the program's process.
    """

    timeout: float = 5.0
    memory_mb: int = 1024


@dataclass(frozen=True)
class RunResult:
    """The outcome of one program: ``status`` is passed, failed, timeout or blocked."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@contextlib.contextmanager
def allow_code_execution() -> Iterator[None]:
    """Within this block, ``run_program`` may run generated code."""
    _allowed.append(True)
    try:
        yield
    finally:
        _allowed.pop()


def check_allowed() -> None:
    """Raise unless inside ``allow_code_execution``."""
    if not _allowed:
        raise MinitronError(
            "code execution is off: pass --allow-code-execution to run generated programs"
        )


@functools.lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """``("unshare", "-rn")`` when this user may create a network namespace, else ``()``."""
    tool = shutil.which("unshare")
    if tool is None:
        return ()
    try:
        probe = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return (tool, "-rn") if probe.returncode == 0 else ()


def run_program(source: str, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` (a program with its tests) in the sandbox; passed means exit code 0.

    Raises:
        MinitronError: If code execution was not allowed.
    """
    check_allowed()
    with tempfile.TemporaryDirectory(prefix="minitron-code-") as folder:
        Path(folder, "program.py").write_text(source, encoding="utf-8")
        command = [
            *network_namespace_prefix(),
            sys.executable, "-I", "-S", "-B", str(RUNNER),
            str(limits.memory_mb * 2**20), str(max(1, math.ceil(limits.timeout))),
        ]  # fmt: skip
        env = {"HOME": folder, "TMPDIR": folder, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            _, stderr = process.communicate(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return RunResult("timeout", f"killed after {limits.timeout:g} s")
        finally:
            _kill_group(process)  # nothing the program started outlives it
    return _outcome(process.returncode, stderr.decode("utf-8", "replace"))


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _outcome(returncode: int, stderr: str) -> RunResult:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if returncode == 0:
        return RunResult("passed")
    if "minitron sandbox:" in stderr:
        return RunResult("blocked", last)
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return RunResult("timeout", f"CPU limit (signal {-returncode})")
    return RunResult("failed", last or f"exit code {returncode}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): ``1 - C(n - c, k) / C(n, k)``.

    Args:
        n: Programs generated for a problem.
        c: How many of them passed.
        k: Programs one may submit.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} programs per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_programs(
    tests: Sequence[str], programs: Sequence[Sequence[str]], k: Sequence[int] = (1,)
) -> dict[str, float]:
    """Mean pass@k over problems: ``programs[i]`` are candidates for ``tests[i]``."""
    counts = []
    for test, candidates in zip(tests, programs, strict=True):
        passed = sum(run_program(f"{program}\n\n{test}\n").passed for program in candidates)
        counts.append((len(candidates), passed))
    return {f"pass@{j}": sum(pass_at_k(n, c, j) for n, c in counts) / len(counts) for j in k}


def pass_at_1(references: Sequence[str], predictions: Sequence[str | Sequence[str]]) -> float:
    """lm-eval metric: pass@1 of generated programs against their tests (one doc per call)."""
    programs = [[p] if isinstance(p, str) else list(p) for p in predictions]
    return score_programs(list(references), programs, (1,))["pass@1"]


class CodeEval:
    """A stand-in for Hugging Face ``evaluate.load("code_eval")`` that uses this sandbox."""

    def compute(
        self,
        references: Sequence[str],
        predictions: Sequence[Sequence[str]],
        k: Sequence[int] = (1, 10, 100),
        **_: object,
    ) -> tuple[dict[str, float], dict]:
        usable = [j for j in k if all(len(p) >= j for p in predictions)]
        return score_programs(references, predictions, usable), {}
