"""Run one untrusted program inside the sandbox (started by ``minitron.eval.code``).

Usage: ``python -I -S -B _sandbox.py MEMORY_BYTES CPU_SECONDS PROCESSES`` with the
working folder holding ``program.py``; ``_jail.py`` calls ``run`` the same way once
the program is contained. Only the standard library is used, so the
interpreter can run isolated (``-I -S``): no site-packages, no user paths.

Before the program runs this sets resource limits and installs an audit hook
(PEP 578) that refuses, inside this interpreter: writing, creating, renaming or
deleting files outside the working folder; any socket; starting processes;
loading native code through ctypes. An audit hook cannot be removed from Python,
but it is not a security boundary against native code: see docs/eval.md.
"""

import os
import resource
import sys

BLOCKED_EVENTS = {
    "socket.__new__": "network access",
    "socket.connect": "network access",
    "socket.bind": "network access",
    "socket.getaddrinfo": "network access",
    "socket.sendto": "network access",
    "subprocess.Popen": "starting a process",
    "os.system": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "starting a process",
    "os.forkpty": "starting a process",
    "pty.spawn": "starting a process",
    "ctypes.dlopen": "loading native code",
    "ctypes.dlsym": "loading native code",
    "ctypes.cdata": "loading native code",
    "os.kill": "signalling a process",
    "os.killpg": "signalling a process",
}
PATH_EVENTS = {  # event -> positions of path arguments
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.move": (1,),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class SandboxViolation(PermissionError):
    """What the audit hook raises; the parent recognises its message."""


def _inside(path, root):
    if isinstance(path, int):  # an already open file descriptor
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(root, os.fspath(path)))
    return real == root or real.startswith(root + os.sep)


def _make_guard(root):
    def guard(event, args):
        if event in BLOCKED_EVENTS:
            raise SandboxViolation(f"minitron sandbox: {BLOCKED_EVENTS[event]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes and path is not None and not _inside(path, root):
                raise SandboxViolation(f"minitron sandbox: writing {path} is not allowed")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not _inside(args[i], root):
                    raise SandboxViolation(f"minitron sandbox: changing {args[i]} is not allowed")
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise SandboxViolation("minitron sandbox: loading native code is not allowed")

    return guard


def run(memory, cpu, processes):
    """Set the rlimits, install the audit hook, run ``program.py`` of the working folder."""
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    root = os.path.realpath(os.getcwd())
    with open("program.py", encoding="utf-8") as handle:
        source = handle.read()
    code = compile(source, "program.py", "exec")
    for name in [n for n in sys.modules if n.partition(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]  # the jail used ctypes: importing it again meets the hook
    program = sys.modules["__main__"] = type(sys)("__main__")
    sys.addaudithook(_make_guard(root))
    exec(code, program.__dict__)


def main():
    run(*(int(arg) for arg in sys.argv[1:4]))


if __name__ == "__main__":
    main()
