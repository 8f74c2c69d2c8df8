"""Contain one untrusted program with the kernel (started by ``minitron.eval.code``).

Usage: ``python -I -S -B _jail.py MEMORY_BYTES CPU_SECONDS PROCESSES TIMEOUT`` in a
folder holding ``program.py``. Standard library only (``ctypes`` for the system calls
Python 3.11 lacks), so the interpreter runs isolated (``-I -S``).

Three processes, each waiting for the next and passing its exit status on:

- *outside* (this one, the caller's ids): forks *inside*, then writes its user
  and group maps (a process cannot map more than its own id itself);
- *inside*: new user, mount, PID, network, IPC and UTS namespaces; forks *init*;
- *init*: PID 1 of the new PID namespace. It builds a new root (a small tmpfs)
  holding only, bound at their own paths, ``/usr``, ``/bin``, ``/sbin``, ``/lib*``,
  ``/etc``, the Python it runs on (its import path and its library folder),
  ``/dev/{null,zero,full,random,urandom}`` and a fresh ``/proc``, and pivots into it:
  nothing else of the machine is reachable. It remounts every mount read-only (and
  nosuid), mounts a small tmpfs on the working folder (the one place it can
  write), forbids new user namespaces, drops to an id with no capabilities at all,
  blocks ``execve`` and sockets with seccomp, sets rlimits and runs the program
  (``_sandbox.run``). When PID 1 ends, the kernel kills every process
  left in its namespace, ``setsid`` or not. At the time limit the outside
  process kills PID 1 and waits until the namespace is empty; each process also
  has the parent-death signal, so killing the outside process kills the rest.

Started as root, the program runs as uid 65534 (``RLIMIT_NPROC`` does not apply
to uid 0); started as another user, as that user (uid 0 inside). Either way it
has no capabilities, so file permissions apply to it in full: the Python it runs
on must be readable by it, which is checked before it runs (pyenv's folders under
a 0700 ``/root`` are fine: the new root's own folders lead to them). Any setup
failure ends the run with exit code 125 and one line ``minitron sandbox setup: ...``
on stderr: nothing runs then.
"""

import contextlib
import ctypes
import importlib.util
import os
import select
import signal
import stat
import sys

SETUP_FAILED = 125
TIMED_OUT = 124
NOBODY = 65534
WORKDIR_BYTES = 64 * 2**20
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 22, 24, 38
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # system call numbers (glibc has no wrapper)
# What the new root holds besides the Python installation (each where it exists).
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
# seccomp: audit arch and (execve, execveat, socket, io_uring_setup) per machine;
# machines not listed are refused.
SECCOMP_ARCH = {
    "x86_64": (0xC000003E, (59, 322, 41, 425)),
    "aarch64": (0xC00000B7, (221, 281, 198, 425)),
}
X32_SYSCALL_BIT = 0x40000000
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
EPERM = 1

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A containment step failed: nothing may run."""


def _call(what, result):
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _prctl(what, option, arg=0, arg3=0):
    _call(what, _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0))


def _mount(source, target, fstype, flags, data=None):
    args = [None if a is None else os.fsencode(a) for a in (source, target, fstype, data)]
    _call(f"mount {target}", _libc.mount(*args[:3], ctypes.c_ulong(flags), args[3]))


def _write(path, text):
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def _pass_on(status):
    """End this process the way its child ended (same exit code or same signal)."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def _fail(err):
    print(f"minitron sandbox setup: {err}", file=sys.stderr, flush=True)
    os._exit(SETUP_FAILED)


def outside(limits, timeout):
    """Fork the inside process, map its ids, kill its PID namespace at ``timeout``.

    Exits as the inside process did, or with ``TIMED_OUT`` when it was killed. In
    the program's process this returns (or raises) when the program ends, so that
    the interpreter exits as it does after any script.
    """
    try:
        _prctl("prctl(PDEATHSIG)", PR_SET_PDEATHSIG, signal.SIGKILL)
        up_r, up_w = os.pipe()  # inside -> outside: "u" once unshared, then init's pid
        down_r, down_w = os.pipe()  # outside -> inside: "m" once the ids are mapped
        pid = os.fork()
    except (OSError, SetupError) as err:
        _fail(err)
    if pid == 0:
        os.close(up_r)
        os.close(down_w)
        _run_inside(up_w, down_r, limits)
        return
    os.close(up_w)
    os.close(down_r)
    init = None
    try:
        if os.read(up_r, 1) == b"u":  # else: the inside said why and exits
            _write_id_maps(pid)
            os.write(down_w, b"m")
            os.close(down_w)
            init_pid = os.read(up_r, 32)
            init = os.pidfd_open(int(init_pid)) if init_pid else None
    except (OSError, ValueError, SetupError) as err:
        print(f"minitron sandbox setup: {err}", file=sys.stderr, flush=True)
    _supervise(pid, init, timeout)


def _supervise(pid, init, timeout):
    """Wait for the inside process; at ``timeout`` kill PID 1 (so the namespace) first."""
    done, _, _ = select.select([os.pidfd_open(pid)], [], [], timeout)
    if not done and init is not None:
        with contextlib.suppress(ProcessLookupError):  # it ended just now
            signal.pidfd_send_signal(init, signal.SIGKILL)
        os.waitpid(pid, 0)  # returns once the namespace is empty: the kernel empties it first
        os._exit(TIMED_OUT)
    _pass_on(os.waitpid(pid, 0)[1])


def _write_id_maps(pid):
    """Root maps itself and uid/gid 65534; any other user can only map itself (to 0)."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        users = groups = f"0 0 1\n{NOBODY} {NOBODY} 1\n"
    else:
        users, groups = f"0 {uid} 1\n", f"0 {gid} 1\n"
        _write(f"/proc/{pid}/setgroups", "deny")
    _write(f"/proc/{pid}/uid_map", users)
    _write(f"/proc/{pid}/gid_map", groups)


def _run_inside(up_w, down_r, limits):
    """New namespaces, then fork PID 1; tell the outside its pid; pass its status on."""
    root_started = os.geteuid() == 0
    try:
        _prctl("prctl(PDEATHSIG)", PR_SET_PDEATHSIG, signal.SIGKILL)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET
        _call("unshare", _libc.unshare(flags | CLONE_NEWIPC | CLONE_NEWUTS))
        os.write(up_w, b"u")
        if os.read(down_r, 1) != b"m":
            os._exit(SETUP_FAILED)  # the outside said why
        os.close(down_r)
        pid = os.fork()
        if pid == 0:
            os.close(up_w)
            runner = _contain(root_started)
    except (OSError, SetupError) as err:
        _fail(err)
    if pid == 0:
        memory, cpu, processes = limits
        # The inside process is counted too when it has the program's id (not root's).
        runner.run(memory, cpu, processes + (not root_started))  # the program, as PID 1
        return
    os.write(up_w, str(pid).encode())
    os.close(up_w)
    _pass_on(os.waitpid(pid, 0)[1])


def _contain(root_started):
    """PID 1: contain the filesystem, drop privileges; return the program runner."""
    folder = os.getcwd()
    with open("program.py", encoding="utf-8") as handle:
        source = handle.read()
    runner = _load_runner()  # while the minitron package is still in view
    python = _python_paths()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _build_root(folder, python)
    os.chdir(folder)  # the new root, mounted on the folder
    _pivot_root()
    _write("/proc/sys/user/max_user_namespaces", "0")
    _remount_all_read_only()
    owner = NOBODY if root_started else 0
    options = f"size={WORKDIR_BYTES},nr_inodes=4096,mode=700,uid={owner},gid={owner}"
    _mount("minitron-sandbox", folder, "tmpfs", MS_NOSUID | MS_NODEV, options)
    os.chdir(folder)
    with open("program.py", "w", encoding="utf-8") as handle:
        handle.write(source)
    os.chown("program.py", owner, owner)
    _drop_privileges(root_started)
    _prctl("prctl(PDEATHSIG)", PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change
    _check_readable(python)
    _install_seccomp()
    return runner


def _python_paths():
    """What the interpreter reads once running: its import path (``-I -S``: the
    standard library, its zip, ``lib-dynload``) and its installation's library folder
    (the libraries of ``lib-dynload``'s modules, ``libpython``). Existing ones only."""
    paths = [p for p in sys.path if p]
    for prefix in dict.fromkeys((sys.base_prefix, sys.base_exec_prefix)):
        if os.path.dirname(prefix) != prefix:  # never the whole filesystem
            paths.append(os.path.join(prefix, sys.platlibdir))
    found = [os.path.abspath(p) for p in paths if os.path.exists(p)]
    found += [os.path.realpath(p) for p in found]  # where a link leads, too
    return sorted(dict.fromkeys(found), key=len)  # parents before what they hold


def _build_root(new, python):
    """Mount a tmpfs on ``new`` (the working folder) and bind into it, at their own
    paths, only what the program needs: the system (``SYSTEM``), the Python it runs
    on, a few devices, a fresh ``/proc``; and make an empty working folder in it."""
    _mount("minitron-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    device = os.stat(new).st_dev
    for path in SYSTEM:
        if os.path.islink(path):  # /bin -> usr/bin on a merged /usr
            os.symlink(os.readlink(path), new + path)
        elif os.path.isdir(path):
            _bind(path, new, device)
    for path in python:
        _bind(path, new, device)
    if not _make_dir(new, new, device):
        raise SetupError(f"the working folder {new} lies in a folder the program sees")
    for path in ("/tmp", "/dev/shm", "/proc"):
        _make_dir(new, path, device)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{new}/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o644))
            _mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND)
    _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _make_dir(new, path, device):
    """Make ``new + path`` as folders of the new root's own tmpfs; False where a part of
    it is anything else (a mount, a link), so that nothing is ever made through a bind."""
    current = new
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o755)
        info = os.lstat(current)
        if not stat.S_ISDIR(info.st_mode) or info.st_dev != device:
            return False
    return True


def _bind(path, new, device):
    """Bind ``path`` (a folder or a file) at the same path in the new root, unless
    something bound before already holds it."""
    if os.path.isdir(path):
        if not _make_dir(new, path, device):
            return
    else:
        parent, name = os.path.split(path)
        if not _make_dir(new, parent, device) or os.path.lexists(new + path):
            return
        os.close(os.open(new + path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    _mount(path, new + path, None, MS_BIND | MS_REC)


def _pivot_root():
    """Make the current folder the root and detach the old one, with all it held."""
    machine = os.uname().machine
    if machine not in PIVOT_ROOT:
        raise SetupError(f"no pivot_root for {machine}")
    _call("pivot_root", _libc.syscall(ctypes.c_long(PIVOT_ROOT[machine]), b".", b"."))
    _call("umount the old root", _libc.umount2(b".", MNT_DETACH))
    os.chdir("/")


def _check_readable(python):
    """Without capabilities, the program must still be able to import its standard library."""
    for path in python:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                os.close(os.open(path, os.O_RDONLY))
        except OSError as err:
            raise SetupError(f"the program cannot read its Python ({err})") from err


def _mount_points():
    """Mount points of /proc/self/mountinfo, parents first (octal escapes decoded)."""
    with open("/proc/self/mountinfo", "rb") as handle:
        lines = handle.read().splitlines()
    points = []
    for line in lines:
        field = line.split()[4]
        points.append(os.fsdecode(field.decode("unicode_escape").encode("latin-1")))
    return points


def _remount_all_read_only():
    """Make every mount read-only and nosuid, keeping the flags the kernel locks."""
    for point in dict.fromkeys(_mount_points()):
        try:
            stat = os.statvfs(point)
        except OSError:  # hidden below another mount, or unreachable: so for the program too
            continue
        keep = stat.f_flag & (MS_NODEV | MS_NOEXEC)  # ST_NODEV, ST_NOEXEC share the values
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep
        _mount(None, point, None, flags)
        if not os.statvfs(point).f_flag & MS_RDONLY:
            raise SetupError(f"{point} is still writable")


def _drop_privileges(root_started):
    """Become a user with no capabilities: none effective, permitted, inheritable,
    ambient or in the bounding set."""
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
        last_cap = int(handle.read())
    for cap in range(last_cap + 1):
        _prctl("prctl(CAPBSET_DROP)", PR_CAPBSET_DROP, cap)
    if root_started:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # clears the capabilities (no KEEPCAPS)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: none (clears ambient)
    _call("capset", _libc.capset(header, data))


def seccomp_filter(machine):
    """The BPF program: ``(code, jt, jf, k)`` per instruction.

    ``execve``, ``execveat``, ``socket`` and ``io_uring_setup`` (which could open
    sockets past this filter) fail with EPERM; calls of another ABI kill the
    process; everything else is allowed.
    """
    if machine not in SECCOMP_ARCH:
        raise SetupError(f"no seccomp filter for {machine}")
    arch, numbers = SECCOMP_ARCH[machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..|JGE|K, BPF_RET|K
    body = [(ld, 0, 0, 4), (jeq, 0, "kill", arch), (ld, 0, 0, 0)]  # load arch; load nr
    if machine == "x86_64":  # the x32 ABI numbers its calls from this bit: refuse them all
        body.append((jge, "deny", 0, X32_SYSCALL_BIT))
    body += [(jeq, "deny", 0, number) for number in numbers]
    body += [(ret, 0, 0, RET_ALLOW), (ret, 0, 0, RET_KILL), (ret, 0, 0, RET_ERRNO | EPERM)]
    labels = {"kill": len(body) - 2, "deny": len(body) - 1}

    def offset(jump, here):  # a BPF jump counts the instructions it skips
        return labels[jump] - here - 1 if isinstance(jump, str) else jump

    return [(code, offset(jt, i), offset(jf, i), k) for i, (code, jt, jf, k) in enumerate(body)]


def _install_seccomp():
    program = seccomp_filter(os.uname().machine)

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]  # fmt: skip

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*[Filter(*f) for f in program])
    _prctl("prctl(NO_NEW_PRIVS)", PR_SET_NO_NEW_PRIVS, 1)
    fprog = Program(len(program), filters)
    _prctl("seccomp", PR_SET_SECCOMP, 2, ctypes.addressof(fprog))


def _load_runner():
    """``_sandbox.py`` from this folder, by path: the folder is not put on ``sys.path``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox.py")
    spec = importlib.util.spec_from_file_location("_minitron_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    outside(tuple(int(arg) for arg in sys.argv[1:4]), float(sys.argv[4]))


if __name__ == "__main__":
    main()
