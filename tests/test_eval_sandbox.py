"""The OS sandbox of generated programs: each escape found in review, stopped.

Every escape below got out of the first sandbox (an audit hook and rlimits) while
``run_program`` still reported a result. Each is checked from outside the
sandbox: the file that must not appear, the process that must not exist (found
by scanning /proc for a marker it holds open or has in its command line).

The program sees none of the test's files (its root holds only the system and its
Python), so writes are aimed at the one folder of the machine it sees that its user
may own: the standard library (a pyenv in one's home). Outside, that is this
interpreter's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from minitron.commands.eval import EvalConfig, run_eval
from minitron.config import parse_config
from minitron.errors import MinitronError
from minitron.eval import isolation
from minitron.eval.code import Limits, allow_code_execution, run_program
from tests.conftest import save_tiny_checkpoint
from tests.test_cli import MINITRON, assert_user_error

FIXTURES = Path(__file__).parent / "fixtures" / "eval_tasks"

PROBLEM = isolation.sandbox_problem()
needs_sandbox = pytest.mark.skipif(
    PROBLEM is not None, reason=f"this system cannot create the sandbox's namespaces: {PROBLEM}"
)
QUICK = Limits(timeout=2)
# Starts a process without any audit event (Python 3.11/3.12 argument order); the
# child runs ``preexec`` (Python, no exec) after ``setsid`` when asked, then execs ``args``.
SPAWN = """
import _posixsubprocess, os, sys, time

def spawn(args, setsid=False, preexec=None, keep=()):
    errors_r, errors_w = os.pipe()
    return _posixsubprocess.fork_exec(
        args, [os.fsencode(args[0])], True, tuple(sorted((errors_w, *keep))), None, None,
        -1, -1, -1, -1, -1, -1, errors_r, errors_w, True, setsid, -1,
        None, None, None, -1, preexec, False,
    )
"""


def _cmdlines_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _holding(name: str) -> list[int]:
    """Processes (anywhere on this machine) with a file called ``name`` open."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd).endswith("/" + name) for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return found


@pytest.fixture
def outside() -> Iterator[Path]:
    """A file in the standard library folder that must not appear (removed if it does)."""
    path = Path(os.__file__).parent / f"minitron-escaped-{uuid.uuid4().hex}.txt"
    yield path
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def _watch(probe) -> Iterator[list[int]]:
    """Sample ``probe()`` (a list of pids) until the block ends; yield the largest count
    seen (in a one-item list); afterwards kill whatever it still finds (old code leaks)."""
    most, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            most[0] = max(most[0], len(probe()))

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield most
    finally:
        done.set()
        thread.join()
        for pid in probe():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def held() -> str:
    """The name of a file (in the program's folder) that the program's children hold
    open: how they are found from outside."""
    return f"held-open-by-sandboxed-children-{uuid.uuid4().hex}"


@needs_sandbox
def test_a_relative_write_after_chdir_does_not_land_outside(outside):
    program = f"import os\nos.chdir({str(outside.parent)!r})\nopen({outside.name!r}, 'w')"
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert not outside.exists()
    assert result.status == "failed" and "Read-only file system" in result.detail


@needs_sandbox
def test_a_dir_fd_write_does_not_land_outside(outside):
    program = (
        f"import os\nfolder = os.open({str(outside.parent)!r}, os.O_RDONLY)\n"
        f"os.open({outside.name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=folder)"
    )
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert not outside.exists()
    assert result.status == "failed" and "Read-only file system" in result.detail


@needs_sandbox
def test_fork_exec_without_audit_event_cannot_start_a_program():
    marker = f"minitron-test-{uuid.uuid4().hex}"
    program = SPAWN + (
        f"child = spawn(['/bin/sh', '-c', 'sleep 3; echo {marker}'])\n"
        "status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])\n"
        "assert status == 255, status  # the child could not exec /bin/sh\n"
    )
    with _watch(lambda: _cmdlines_with(marker)) as most, allow_code_execution():
        result = run_program(program, Limits(timeout=4))
    assert most[0] == 0  # no /bin/sh with the marker ever ran
    assert result.passed, result.detail


@needs_sandbox
@pytest.mark.parametrize("ending", ["killed at the time limit", "exits normally"])
def test_setsid_children_are_gone_when_run_program_returns(held, ending):
    program = SPAWN + (
        "ready_r, ready_w = os.pipe()\n"
        "def hold():\n"
        f"    handle = open({held!r}, 'a')\n"
        "    os.write(ready_w, b'x')\n"
        "    time.sleep(60)\n"
        "spawn([sys.executable], setsid=True, preexec=hold, keep=(ready_w,))\n"
        "assert os.read(ready_r, 1) == b'x'\n"
        "time.sleep(1)  # for the test to see the child from outside\n"
    )
    if ending == "killed at the time limit":
        program += "time.sleep(60)\n"
    with _watch(lambda: _holding(held)) as most, allow_code_execution():
        result = run_program(program, QUICK)
        left = _holding(held)
    assert most[0] == 1  # the setsid child ran (seen from outside)...
    assert left == []  # ...and was gone as soon as run_program returned
    assert result.status == ("timeout" if ending.startswith("killed") else "passed"), result


@needs_sandbox
def test_a_fork_bomb_stops_at_the_process_limit(held):
    """Bounded so that, uncapped (the old code), it makes 100 sleeping processes, not more."""
    program = SPAWN + (
        "def hold():\n"
        f"    handle = open({held!r}, 'a')\n"
        "    time.sleep(60)\n"
        "started = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        spawn([sys.executable], preexec=hold)\n"
        "    except BlockingIOError:\n"
        "        break\n"
        "    started += 1\n"
        "time.sleep(1)\n"
        "raise SystemExit(f'started {started} processes')\n"
    )
    with _watch(lambda: _holding(held)) as most, allow_code_execution():
        result = run_program(program, Limits(timeout=5, processes=8))
    assert 1 <= most[0] <= 7, f"{most[0]} processes at once"  # seen from outside
    assert result.detail == "started 7 processes"  # 8 with the program itself
    assert _holding(held) == []


@needs_sandbox
def test_the_program_sees_a_contained_system():
    program = """
import os
assert os.getpid() == 1  # PID 1 of its own PID namespace
interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
assert interfaces == ["lo"], interfaces  # its own network namespace
status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines())
assert int(status["CapEff"], 16) == 0, status["CapEff"]
assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
home = os.getcwd()
for folder in ("/", "/tmp", "/dev/shm", "/etc", "/usr", os.path.dirname(os.__file__), home + "/.."):
    os.chdir(folder)  # a relative path gets past the audit hook: the kernel says no
    try:
        open("minitron-sandbox-test", "w")
    except OSError as err:
        assert err.errno == 30, (folder, err)  # EROFS
    else:
        raise AssertionError(f"wrote into {folder}")
os.chdir(home)
open("mine.txt", "w").write("its own folder is writable")
"""
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert result.passed, result.detail


@needs_sandbox
def test_with_the_audit_hook_switched_off_the_kernel_still_says_no(outside):
    """The audit hook is no boundary: its tables are one frame away, and so is the jail's
    ctypes. Emptied, it lets everything through; the kernel still refuses."""
    program = f"""
import errno, os, socket, sys
frame = sys._getframe()
while "BLOCKED_EVENTS" not in frame.f_globals:
    frame = frame.f_back
frame.f_globals["BLOCKED_EVENTS"].clear()
frame.f_globals["PATH_EVENTS"].clear()
frame.f_globals["_inside"] = lambda path, root: True

def refused(call, code):
    try:
        result = call()
    except OSError as err:
        assert err.errno == code, err
    else:
        assert result == -1 and ctypes.get_errno() == code, result

refused(lambda: open({str(outside)!r}, "w"), errno.EROFS)
refused(lambda: socket.socket(socket.AF_UNIX), errno.EPERM)  # seccomp
refused(lambda: socket.socket(socket.AF_INET), errno.EPERM)
refused(lambda: os.execv("/bin/sh", ["sh"]), errno.EPERM)
while "_libc" not in frame.f_globals:
    frame = frame.f_back
libc, ctypes = frame.f_globals["_libc"], frame.f_globals["ctypes"]
refused(lambda: libc.sethostname(b"escaped", 7), errno.EPERM)  # no capabilities
refused(lambda: libc.mount(b"none", b".", b"tmpfs", 0, None), errno.EPERM)
refused(lambda: libc.unshare(0x10000000), errno.ENOSPC)  # no new user namespace
"""
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert result.passed, result.detail
    assert not outside.exists()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="about a sandbox started as root")
CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@needs_sandbox
def test_the_program_has_no_capabilities_at_all():
    program = f"""
status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines())
sets = {{name: status[name] for name in {CAPABILITY_SETS!r}}}
assert all(int(value, 16) == 0 for value in sets.values()), sets
"""
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert result.passed, result.detail


@needs_sandbox
@needs_root
def test_started_as_root_it_cannot_read_files_only_root_may_read(tmp_path):
    """A 0600 file of root's, under a 0700 folder (pytest's) and under /tmp, and
    /etc/shadow: CAP_DAC_READ_SEARCH read them all."""
    hidden = tmp_path / "secret-under-0700"
    hidden.write_text("token")
    hidden.chmod(0o600)
    handle, bare = tempfile.mkstemp(prefix="minitron-secret-")  # 0600, in 1777 /tmp
    os.write(handle, b"token")
    os.close(handle)
    program = f"""
import errno, os
for path in ({str(hidden)!r}, {bare!r}, "/etc/shadow"):
    try:
        open(path).read()
    except OSError as err:
        assert err.errno in (errno.EACCES, errno.ENOENT), (path, err)
    else:
        raise AssertionError(f"read {{path}}")
"""
    try:
        with allow_code_execution():
            result = run_program(program, QUICK)
    finally:
        os.unlink(bare)
    assert result.passed, result.detail


@needs_sandbox
def test_it_sees_the_system_and_its_python_but_no_one_s_files(tmp_path):
    repository = Path(__file__).resolve().parents[1]
    hidden = [tmp_path, repository, Path.home() / ".cache", Path.home() / ".ssh", "/home", "/sys"]
    if sys.prefix != sys.base_prefix:
        hidden.append(Path(sys.prefix))  # the venv: only the base Python shows
    home = Path.home().resolve()
    base = Path(sys.base_prefix).resolve()
    # Of a home holding the interpreter (pyenv), only the way to it shows.
    in_home = [base.relative_to(home).parts[0]] if base.is_relative_to(home) else None
    program = f"""
import os
import decimal, hashlib, json, zlib  # pure and native parts of the standard library
assert hashlib.sha256(b"x").hexdigest().startswith("2d711642"), "no sha256"
assert decimal.Decimal(1) / 4 == decimal.Decimal("0.25")
assert open("/dev/null").read() == ""
assert len(open("/dev/urandom", "rb").read(8)) == 8
assert open("/etc/passwd").readline()
folder, name = os.path.split(os.getcwd())
assert os.listdir(folder) == [name], os.listdir(folder)  # none of the other temporary files
for path in {[str(path) for path in hidden]!r}:
    assert not os.path.exists(path), path
if {in_home!r} is None:
    assert not os.path.exists({str(home)!r})
else:
    assert os.listdir({str(home)!r}) == {in_home!r}, os.listdir({str(home)!r})
"""
    with allow_code_execution():
        result = run_program(program, QUICK)
    assert result.passed, result.detail


def _load_jail():
    spec = importlib.util.spec_from_file_location("_jail", isolation.JAIL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bpf_answer(program: list[tuple[int, int, int, int]], arch: int, nr: int) -> int:
    """Run a seccomp BPF program (the few opcodes the jail uses) on one system call."""
    data = struct.pack("<II", nr, arch) + bytes(56)  # seccomp_data: nr, arch, ip, args
    pc = acc = 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x06:  # BPF_RET|BPF_K
            return k
        if code == 0x20:  # BPF_LD|BPF_W|BPF_ABS
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code in (0x15, 0x35):  # BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K
            taken = acc == k if code == 0x15 else acc >= k
            pc += 1 + (jt if taken else jf)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize(
    ("machine", "arch", "nr", "answer"),
    [
        ("x86_64", 0xC000003E, 59, "deny"),  # execve
        ("x86_64", 0xC000003E, 322, "deny"),  # execveat
        ("x86_64", 0xC000003E, 41, "deny"),  # socket
        ("x86_64", 0xC000003E, 425, "deny"),  # io_uring_setup
        ("x86_64", 0xC000003E, 0x40000000 | 520, "deny"),  # x32 execve
        ("x86_64", 0xC000003E, 0, "allow"),  # read
        ("x86_64", 0xC000003E, 57, "allow"),  # fork: capped by RLIMIT_NPROC instead
        ("x86_64", 0xC000003E, 53, "allow"),  # socketpair: no way out
        ("x86_64", 0x40000003, 11, "kill"),  # i386 execve through int 0x80
        ("aarch64", 0xC00000B7, 221, "deny"),  # execve
        ("aarch64", 0xC00000B7, 198, "deny"),  # socket
        ("aarch64", 0xC00000B7, 59, "allow"),  # pipe2 (x86_64's execve number)
        ("aarch64", 0x40000028, 11, "kill"),  # arm 32-bit
    ],
)
def test_seccomp_filter_decides_each_call(machine, arch, nr, answer):
    jail = _load_jail()
    expected = {"deny": jail.RET_ERRNO | 1, "allow": jail.RET_ALLOW, "kill": jail.RET_KILL}
    assert _bpf_answer(jail.seccomp_filter(machine), arch, nr) == expected[answer]


def test_other_machines_are_refused_not_left_unfiltered():
    jail = _load_jail()
    with pytest.raises(jail.SetupError, match="no seccomp filter for riscv64"):
        jail.seccomp_filter("riscv64")


def test_code_is_refused_in_one_line_where_no_sandbox_can_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "sandbox_problem", lambda: "unshare: Operation not permitted")
    marker = tmp_path / "ran"
    with allow_code_execution(), pytest.raises(MinitronError) as refused:
        run_program(f"open({str(marker)!r}, 'w').close()", QUICK)
    message = str(refused.value)
    assert "\n" not in message and "unshare: Operation not permitted" in message
    assert isolation.UNSAFE_FLAG in message
    assert not marker.exists()


def test_unsafe_mode_runs_without_the_sandbox_where_none_can_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "sandbox_problem", lambda: "unshare: Operation not permitted")
    outside = tmp_path / "escaped.txt"
    with allow_code_execution(unsafe_without_sandbox=True):
        pid = run_program("import os\nassert os.getpid() != 1", QUICK)
        hook = run_program(f"open({str(outside)!r}, 'w')", QUICK)
    assert pid.passed, pid.detail  # not in a PID namespace: uncontained
    assert hook.status == "blocked" and not outside.exists()  # the audit hook is still there


def test_the_probe_reports_why_namespaces_cannot_be_made(monkeypatch, tmp_path):
    failing = tmp_path / "jail.py"
    failing.write_text(
        "import sys\nprint('minitron sandbox setup: unshare: No space left on device', "
        "file=sys.stderr)\nraise SystemExit(125)\n"
    )
    monkeypatch.setattr(isolation, "JAIL", failing)
    isolation.sandbox_problem.cache_clear()
    try:
        assert isolation.sandbox_problem() == "unshare: No space left on device"
    finally:
        isolation.sandbox_problem.cache_clear()


def _minitron_without_namespaces(*args):
    """``minitron ARGS`` where no user namespace can be made: this system, or else inside
    a user namespace that allows none below it (``max_user_namespaces`` 0)."""
    command = [str(MINITRON), *map(str, args)]
    if PROBLEM is None:
        if shutil.which("unshare") is None:
            pytest.skip("needs util-linux unshare to take user namespaces away")
        script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
        command = ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *command]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(command, env=env, capture_output=True, text=True)


def _code_task_config(tiny: Path, **flags: bool) -> EvalConfig:
    """``minitron eval TINY --tasks tiny_code --limit 1 [--allow-code-execution ...]``."""
    settings = {"models": [str(tiny)], "tasks": ["tiny_code"], "limit": 1}
    settings["include_path"] = [str(FIXTURES)]
    return parse_config(EvalConfig, settings | flags)


def test_cli_refuses_code_tasks_in_one_line_without_a_sandbox(tmp_path):
    """The one test here that starts ``minitron`` (tens of seconds): the refusal as
    users meet it. The rest of the command's logic is tested in-process below."""
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["eval", tiny, "--tasks", "tiny_code", "--include-path", FIXTURES, "--limit", 1]
    refused = _minitron_without_namespaces(*args, "--output", out, "--allow-code-execution")
    assert_user_error(refused, "this system cannot create one (unshare: ")
    assert isolation.UNSAFE_FLAG in refused.stderr
    assert not out.exists()


def test_the_unsafe_flag_runs_code_tasks_uncontained_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(isolation, "sandbox_problem", lambda: "unshare: Operation not permitted")
    contained = []
    program_command = isolation.program_command

    def spy(*args, **kwargs):
        contained.append(args[4] if len(args) > 4 else kwargs.get("contained", True))
        return program_command(*args, **kwargs)

    monkeypatch.setattr(isolation, "program_command", spy)
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    config = _code_task_config(tiny, allow_code_execution=True)
    with pytest.raises(MinitronError, match="cannot create one") as refused:
        run_eval(config, tmp_path / "refused")
    assert "\n" not in str(refused.value) and isolation.UNSAFE_FLAG in str(refused.value)
    assert not (tmp_path / "refused").exists() and contained == []
    unsafe = dataclasses.replace(config, unsafe_code_execution_without_sandbox=True)
    record = run_eval(unsafe, tmp_path / "out")
    warning = " ".join(capsys.readouterr().err.split())
    assert "this system cannot make the OS sandbox (unshare: Operation not permitted)" in warning
    assert contained == [False]  # the one program ran, without the sandbox
    assert record["models"][0]["tasks"]["tiny_code"]["samples"] == 1
    assert (tmp_path / "out" / "results.json").exists()


def test_the_unsafe_flag_alone_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(MinitronError) as refused:
        _code_task_config(tmp_path / "tiny", unsafe_code_execution_without_sandbox=True)
    assert str(refused.value) == f"{isolation.UNSAFE_FLAG} needs --allow-code-execution"
