"""Recording a rank's file-system calls with strace, attached to the rank's own process.

Why strace (ALICE's way) rather than a recording FUSE file system: it sees every system
call of every thread and child of the rank, whatever language makes it (the safetensors
Rust writer, torch.save's C++ zip writer), needs no kernel module, mount or privileges
beyond tracing one's own process, and is packaged everywhere (``apt-get install
strace``). A FUSE recorder would also need ``/dev/fuse`` and a mount in every test.

The rank starts ``strace -p <its pid>`` and waits for strace's "attached" line before it
runs the save, so no call of the save is missed; afterwards SIGINT detaches strace, which
flushes its files before it exits.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

__all__ = ["MAX_WRITE", "TRACED_CALLS", "RecorderUnavailable", "recorder_unavailable", "recording"]

MAX_WRITE = 1 << 22
"""The longest single write recorded in full (4 MiB); a longer one makes the case unsupported."""

TRACED_CALLS = (
    # creating, opening, positioning and closing descriptors
    "open", "openat", "openat2", "creat", "close", "close_range", "dup", "dup2", "dup3",
    "fcntl", "lseek", "read", "readv", "clone", "clone3", "fork", "vfork",
    # data
    "write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "truncate",
    "fallocate", "mmap", "copy_file_range", "sendfile", "splice",
    # names
    "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "mkdir", "mkdirat",
    "link", "linkat", "symlink", "symlinkat",
    # durability
    "fsync", "fdatasync", "sync", "syncfs",
)  # fmt: skip
"""The system calls recorded (names this architecture lacks are ignored: ``?name``)."""

_PR_SET_PTRACER, _PR_SET_PTRACER_ANY = 0x59616D61, ctypes.c_ulong(-1)


class RecorderUnavailable(RuntimeError):
    """strace is missing or may not trace here: the crash-state tests cannot run."""


@cache
def recorder_unavailable() -> str | None:
    """Why strace cannot record here (``None`` when it can): checked once, by tracing ``true``."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (apt-get install strace), so no file-system call can be recorded"
    true = shutil.which("true") or "/bin/true"
    done = subprocess.run(
        [strace, "-f", "-o", os.devnull, true], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return f"strace cannot trace here ({done.stderr.strip()[:300]})"
    return None


def _allow_tracing_by_child() -> None:
    """Under Yama's ptrace_scope 1 a process may trace only its descendants: let it be traced
    by its own strace child."""
    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)


def _tracer_of(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as status:
        for line in status:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


@contextmanager
def recording(prefix: str) -> Iterator[None]:
    """Record every file-system call of this process, its threads and children into
    ``<prefix>.<tid>`` files while the block runs.

    Raises :class:`RecorderUnavailable` if strace cannot attach.
    """
    reason = recorder_unavailable()
    if reason is not None:
        raise RecorderUnavailable(reason)
    _allow_tracing_by_child()
    calls = "trace=" + ",".join(f"?{name}" for name in TRACED_CALLS)
    strace = subprocess.Popen(
        [
            "strace", "-f", "-ff", "-ttt", "-y", "-xx", "-z", "-s", str(MAX_WRITE),
            "-e", calls, "-o", prefix, "-p", str(os.getpid()),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    first = strace.stderr.readline()  # "strace: Process N attached[ with T threads]"
    if "attached" not in first or _tracer_of(os.getpid()) != strace.pid:
        strace.kill()
        rest = strace.communicate()[1]
        raise RecorderUnavailable(
            f"strace did not attach to rank process {os.getpid()}: {first}{rest}"
        )
    try:
        yield
    finally:
        strace.send_signal(signal.SIGINT)
        try:
            strace.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.communicate()
            raise RecorderUnavailable("strace did not detach within 120 s") from None
