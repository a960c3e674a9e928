"""Recording a rank's file-system calls with strace, attached to the rank's own process.

Why strace (ALICE's way) rather than a recording FUSE file system: it sees every system
call of every thread and child of the rank, whatever language makes it (the safetensors
Rust writer, torch.save's C++ zip writer), needs no kernel module, mount or privileges
beyond tracing one's own process, and is packaged everywhere (``apt-get install
strace``). A FUSE recorder would also need ``/dev/fuse`` and a mount in every test.

The rank starts ``strace -p <its pid>`` and waits for strace's "attached" line before it
runs the save, so no call of the save is missed; afterwards SIGINT detaches strace, which
flushes its files before it exits. ``-T`` records each call's duration: an fsync counts
from its return, not its start.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
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
    # asynchronous I/O the model cannot follow: refused when used
    "io_uring_setup", "io_submit",
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


def _allow_tracing_by_child(allow: bool) -> None:
    """Under Yama's ptrace_scope 1 a process may be traced only by its ancestors: let its own
    strace child trace it while recording (``allow``), and take that back afterwards."""
    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        who = _PR_SET_PTRACER_ANY if allow else ctypes.c_ulong(0)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PTRACER, who, 0, 0, 0)


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

    Raises :class:`RecorderUnavailable` if strace cannot attach, or does not detach (then
    after the block, unless the block raised: its exception is not replaced).
    """
    reason = recorder_unavailable()
    if reason is not None:
        raise RecorderUnavailable(reason)
    _allow_tracing_by_child(True)
    calls = "trace=" + ",".join(f"?{name}" for name in TRACED_CALLS)
    strace = subprocess.Popen(
        [
            "strace", "-f", "-ff", "-ttt", "-T", "-y", "-xx", "-z", "-s", str(MAX_WRITE),
            "-e", calls, "-o", prefix, "-p", str(os.getpid()),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    # strace reports every thread it attaches on stderr: read it all the time, or a save that
    # starts thousands of threads fills the pipe and strace stops every traced thread
    lines: list[str] = []
    attached = threading.Event()

    def drain() -> None:
        for line in strace.stderr:
            lines.append(line)
            attached.set()
        attached.set()

    threading.Thread(target=drain, name="ckptconf-strace-stderr", daemon=True).start()
    attached.wait(60)
    if not lines or "attached" not in lines[0] or _tracer_of(os.getpid()) != strace.pid:
        strace.kill()
        strace.wait()
        _allow_tracing_by_child(False)
        raise RecorderUnavailable(
            f"strace did not attach to rank process {os.getpid()}: {''.join(lines)[:500]}"
        )
    ok = False
    try:
        yield
        ok = True
    finally:
        strace.send_signal(signal.SIGINT)
        try:
            strace.wait(timeout=120)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
            if ok:
                raise RecorderUnavailable("strace did not detach within 120 s") from None
        finally:
            _allow_tracing_by_child(False)
