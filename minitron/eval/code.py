"""Scoring generated programs (MBPP-style code tasks) by running them, contained.

lm-eval's own code metric loads ``code_eval`` from the Hugging Face Hub, which
fails offline; minitron scores pass@k itself. Each program plus its tests runs
in a fresh, isolated Python process (``python -I -S -B``, an empty environment)
that the kernel contains (``minitron/eval/_jail.py``):

- its own user, mount, PID, network, IPC and UTS namespaces;
- its own root, holding only the system (``/usr``, ``/etc``, ...) and the Python it
  runs on; every mount read-only except a 64 MiB tmpfs working folder (its ``HOME``
  and ``TMPDIR``); no new user namespaces; no capabilities at all; seccomp refuses
  ``execve`` and sockets;
- rlimits: processes, address space, CPU seconds, file size, no core dumps;
- at the time limit its whole PID namespace is killed, children included;
- and, as defense in depth, an audit hook (``_sandbox.py``) that refuses writes
  outside the working folder, sockets, new processes and ctypes.

Nothing runs unless code execution was allowed (``allow_code_execution``). Where
the kernel cannot make the namespaces, programs are refused unless that
permission also accepted running without them (``unsafe_without_sandbox``): then
only the rlimits and the audit hook remain. docs/eval.md says what is and is not contained.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from minitron.errors import MinitronError
from minitron.eval import isolation
from minitron.eval.isolation import SETUP_FAILED, SETUP_PREFIX, TIMED_OUT

BACKSTOP_SECONDS = 10.0  # the jail kills at the limit itself; this is in case it hangs
_allowed: list[bool] = []  # one entry per open allow_code_execution: gave up the sandbox?


@dataclass(frozen=True)
class Limits:
    """Per-program limits.

    Attributes:
        timeout: Wall-clock seconds before the program and all it started are killed.
        memory_mb: Address-space limit of each of the program's processes.
        processes: Processes (and threads) the program may have at once, itself included.
    """

    timeout: float = 5.0
    memory_mb: int = 1024
    processes: int = 32


@dataclass(frozen=True)
class RunResult:
    """The outcome of one program: ``status`` is passed, failed, timeout, blocked or error.

    ``blocked``: the audit hook refused something; ``error``: the sandbox could
    not be set up, so the program did not run.
    """

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@contextlib.contextmanager
def allow_code_execution(unsafe_without_sandbox: bool = False) -> Iterator[None]:
    """Within this block, ``run_program`` may run generated code.

    Args:
        unsafe_without_sandbox: Where the kernel cannot make the OS sandbox, run
            programs without it (only rlimits and the audit hook) instead of refusing.
    """
    _allowed.append(unsafe_without_sandbox)
    try:
        yield
    finally:
        _allowed.pop()


def check_allowed() -> bool:
    """Raise unless inside ``allow_code_execution``; return whether to contain programs.

    Raises:
        MinitronError: If code execution was not allowed, or if programs must be
            contained and this system cannot (see ``isolation.require_sandbox``).
    """
    if not _allowed:
        raise MinitronError(
            "code execution is off: pass --allow-code-execution to run generated programs"
        )
    if _allowed[-1] and isolation.sandbox_problem() is not None:
        return False
    isolation.require_sandbox()
    return True


def run_program(source: str, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` (a program with its tests) in the sandbox; passed means exit code 0.

    When it returns, no process the program started is left.

    Raises:
        MinitronError: If code execution was not allowed, or no sandbox can be made.
    """
    contained = check_allowed()
    with tempfile.TemporaryDirectory(prefix="minitron-code-") as folder:
        Path(folder, "program.py").write_text(source, encoding="utf-8")
        command = isolation.program_command(
            limits.memory_mb * 2**20, max(1, math.ceil(limits.timeout)), limits.processes,
            limits.timeout, contained,
        )  # fmt: skip
        process = subprocess.Popen(
            command, cwd=folder, env=isolation.program_env(folder), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        wait = limits.timeout + (BACKSTOP_SECONDS if contained else 0.0)
        try:
            _, stderr = process.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return RunResult("timeout", f"killed after {limits.timeout:g} s")
        finally:
            _kill_group(process)  # uncontained: the process group is all one can kill
    return _outcome(process.returncode, stderr.decode("utf-8", "replace"), limits, contained)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _outcome(returncode: int, stderr: str, limits: Limits, contained: bool) -> RunResult:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if returncode == 0:
        return RunResult("passed")
    if contained and returncode == TIMED_OUT:
        return RunResult("timeout", f"killed after {limits.timeout:g} s")
    if contained and returncode == SETUP_FAILED and last.startswith(SETUP_PREFIX):
        return RunResult("error", last)
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
