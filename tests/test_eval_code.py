"""pass@k and the sandbox that runs generated programs."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import threading
from pathlib import Path

import pytest

from minitron.errors import MinitronError
from minitron.eval.code import (
    CodeEval,
    Limits,
    allow_code_execution,
    pass_at_k,
    run_program,
    score_programs,
)

QUICK = Limits(timeout=1.5)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 6), (4, 4, 2)])
def test_pass_at_k_is_the_chance_a_random_k_subset_holds_a_pass(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_nothing_runs_without_permission(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(MinitronError, match="--allow-code-execution"):
        run_program(f"open({str(marker)!r}, 'w').close()")
    with pytest.raises(MinitronError, match="--allow-code-execution"):
        CodeEval().compute(["assert True"], [["pass"]], k=[1])
    assert not marker.exists()


def test_correct_program_passes_and_wrong_one_fails():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    with allow_code_execution():
        good = run_program(f"def add(a, b):\n    return a + b\n\n{tests}", QUICK)
        bad = run_program(f"def add(a, b):\n    return a * b\n\n{tests}", QUICK)
        scores = score_programs(
            [tests], [["def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"]],
            k=(1, 2),
        )  # fmt: skip
    assert good.passed and good.status == "passed"
    assert bad.status == "failed" and "AssertionError" in bad.detail
    assert scores == {"pass@1": 0.5, "pass@2": 1.0}


def test_infinite_loop_is_killed():
    with allow_code_execution():
        result = run_program("while True:\n    pass", QUICK)
    assert result.status == "timeout"


def test_writing_outside_the_working_folder_is_stopped(tmp_path):
    outside = tmp_path / "escaped.txt"
    with allow_code_execution():
        absolute = run_program(f"open({str(outside)!r}, 'w').write('x')", QUICK)
        relative = run_program("open('../escaped.txt', 'w').write('x')", QUICK)
        renamed = run_program(f"import os\nos.rename('program.py', {str(outside)!r})", QUICK)
        inside = run_program("open('mine.txt', 'w').write('x')\nassert open('mine.txt').read()")
    assert absolute.status == relative.status == renamed.status == "blocked"
    assert not outside.exists()
    assert inside.passed  # its own throwaway folder is writable


def test_network_and_processes_are_stopped(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(server, accepted))
    thread.start()
    marker = tmp_path / "spawned"
    with allow_code_execution():
        connect = run_program(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", QUICK
        )
        spawn = run_program(f"import os\nos.system('touch {marker}')", QUICK)
        native = run_program("import ctypes", QUICK)
    thread.join()
    server.close()
    assert connect.status == "blocked" and "network" in connect.detail
    assert accepted == []
    assert spawn.status == "blocked" and not marker.exists()
    assert native.status == "blocked"


def test_memory_limit_stops_a_huge_allocation():
    with allow_code_execution():
        result = run_program("x = bytearray(8 * 2**30)", Limits(timeout=5, memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.detail


def _accept(server: socket.socket, accepted: list) -> None:
    with contextlib.suppress(OSError):  # timeout: nobody connected
        accepted.append(server.accept())


@pytest.mark.parametrize("script", ["_sandbox.py", "_jail.py"])
def test_sandbox_scripts_are_stdlib_only(script):
    """They run in ``python -I -S``: no site-packages, and no minitron either."""
    source = (Path(__file__).parents[1] / "minitron/eval" / script).read_text()
    lines = [line.split() for line in source.splitlines()]
    imports = {words[1].split(".")[0] for words in lines if words[:1] in (["import"], ["from"])}
    assert imports and imports <= sys.stdlib_module_names, imports - sys.stdlib_module_names


def test_lm_eval_code_tasks_get_the_sandboxed_scorer():
    """lm-eval's MBPP metric calls evaluate.load("code_eval"): it gets minitron's scorer."""
    import evaluate

    from minitron.eval.harness import _code_metric_stand_in

    with _code_metric_stand_in():
        scorer = evaluate.load("code_eval")
    assert isinstance(scorer, CodeEval)
    assert evaluate.load is not None and not isinstance(evaluate.load, CodeEval)
    with allow_code_execution():
        scores, _ = scorer.compute(
            references=["assert f() == 1", "assert f() == 2"],
            predictions=[["def f(): return 1"], ["def f(): return 1"]],
            k=[1, 10],
        )
    assert scores == {"pass@1": 0.5}  # pass@10 needs 10 programs per problem: left out
