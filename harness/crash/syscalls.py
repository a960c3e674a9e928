"""Reading what ``strace -f -ff -ttt -y -xx -z`` wrote: one :class:`Syscall` per line.

``-T`` adds each call's duration. With ``-xx`` every string, including the paths ``-y`` prints after a descriptor
(``4<\\x2f\\x74...>``), is hexadecimal, so no byte of a file name or of written data can
be mistaken for syntax. ``-ff`` writes one file per thread (``<prefix>.<tid>``), so no
call is split into ``<unfinished ...>`` and ``resumed`` halves; ``-ttt`` gives each call's
entry time, by which the threads and ranks are merged into one order. ``-z`` keeps only
calls that succeeded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Syscall",
    "TraceSyntaxError",
    "TruncatedString",
    "decode_string",
    "descriptor",
    "flag_names",
    "iovec_data",
    "read_trace_files",
    "split_arguments",
]

_LINE = re.compile(
    r"^(?P<ts>\d+\.\d+) (?P<name>\w+)\((?P<args>.*)\)\s+= (?P<ret>-?\d+|0x[0-9a-f]+)"
)
_DURATION = re.compile(r" <(\d+\.\d+)>$")
_DESCRIPTOR = re.compile(r"^(?P<fd>-?\d+|AT_FDCWD)(?:<(?P<path>[^>]*)>)?(?P<deleted>\(deleted\))?$")


class TraceSyntaxError(ValueError):
    """A line of the trace that this reader does not understand."""


class TruncatedString(ValueError):
    """A string strace cut short (longer than its ``-s``): the data written is not known."""


@dataclass(frozen=True)
class Syscall:
    """One successful system call of one thread: when it started, what, with what, result."""

    time: float
    """Entry time, seconds since the epoch (``-ttt``)."""
    rank: int
    tid: int
    line: int
    """Line number in its thread's file: the order of calls of one thread."""
    name: str
    args: tuple[str, ...]
    """The arguments as strace printed them, split at top-level commas."""
    ret: int
    ret_path: str | None
    """The path of a returned descriptor (``openat(...) = 4</x>``), if any."""
    duration: float = 0.0
    """Seconds the call took (``-T``)."""

    @property
    def end(self) -> float:
        """When the call returned."""
        return self.time + self.duration

    def where(self) -> str:
        return f"rank {self.rank}, thread {self.tid}: {self.name}"


def split_arguments(text: str) -> tuple[str, ...]:
    """``text`` split at the commas outside quotes, brackets, braces and ``<...>``."""
    parts, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(text):
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>" and depth:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail or parts:
        parts.append(tail)
    return tuple(parts)


def _hex(text: str) -> bytes:
    if text and not text.startswith("\\x"):
        raise TraceSyntaxError(f"expected hexadecimal escapes (strace -xx), got {text[:40]!r}")
    return bytes.fromhex(text.replace("\\x", ""))


def decode_string(token: str) -> bytes:
    """The bytes of a quoted ``-xx`` string; raises :class:`TruncatedString` if strace cut it."""
    if not token.startswith('"'):
        raise TraceSyntaxError(f"expected a quoted string, got {token[:40]!r}")
    end = token.index('"', 1)
    if token[end + 1 :].startswith("..."):
        raise TruncatedString(f"a string of more than {(end - 1) // 4} bytes was cut short")
    return _hex(token[1:end])


def descriptor(token: str) -> tuple[int | None, str | None]:
    """``(fd, path)`` of ``4<\\x2f...>`` or ``AT_FDCWD<...>`` (fd ``None`` for AT_FDCWD);
    ``path`` is ``None`` where strace printed none (a pipe or socket prints ``pipe:[...]``).
    A file unlinked while open prints ``4<...>(deleted)``: its last path is returned."""
    match = _DESCRIPTOR.match(token.strip())
    if match is None:
        raise TraceSyntaxError(f"expected a file descriptor, got {token[:60]!r}")
    fd = None if match["fd"] == "AT_FDCWD" else int(match["fd"])
    raw = match["path"]
    path = os.fsdecode(_hex(raw)) if raw else None
    if path is not None and not path.startswith("/"):
        path = None  # pipe:[..], socket:[..], anon_inode:[..]
    return fd, path


def flag_names(token: str) -> frozenset[str]:
    """The names in a flags argument such as ``O_WRONLY|O_CREAT|O_TRUNC``."""
    return frozenset(part.strip() for part in token.split("|"))


def iovec_data(token: str) -> bytes:
    """The bytes of an iovec array ``[{iov_base="..", iov_len=N}, ...]``, in order."""
    if not token.startswith("["):
        raise TraceSyntaxError(f"expected an iovec array, got {token[:60]!r}")
    data = b""
    for entry in split_arguments(token[1:-1]):
        fields = dict(
            part.split("=", 1) for part in split_arguments(entry.strip("{}")) if "=" in part
        )
        data += decode_string(fields["iov_base"])
    return data


def _parse_line(text: str, rank: int, tid: int, number: int) -> Syscall | None:
    match = _LINE.match(text)
    if match is None:
        if " +++ " in text or " --- " in text or text.strip().endswith("+++"):
            return None  # exits and signals
        if not text.strip():
            return None
        raise TraceSyntaxError(f"rank {rank}, thread {tid}, line {number}: {text[:200]!r}")
    ret_text = match["ret"]
    ret = int(ret_text, 16) if ret_text.startswith("0x") else int(ret_text)
    rest = text[match.end() :]
    ret_path = None
    if rest.startswith("<"):
        decoration = rest[: rest.index(">") + 1]
        if rest[len(decoration) :].startswith("(deleted)"):
            decoration += "(deleted)"
        _, ret_path = descriptor(f"{ret}{decoration}")
    took = _DURATION.search(text)
    return Syscall(
        duration=float(took[1]) if took else 0.0,
        time=float(match["ts"]),
        rank=rank,
        tid=tid,
        line=number,
        name=match["name"],
        args=split_arguments(match["args"]),
        ret=ret,
        ret_path=ret_path,
    )


def read_trace_files(folder: str | os.PathLike, rank: int) -> list[Syscall]:
    """Every call in the ``<prefix>.<tid>`` files of one rank's trace folder."""
    calls = []
    for file in sorted(Path(folder).iterdir()):
        tid = int(file.name.rsplit(".", 1)[1])
        with open(file, encoding="ascii", errors="replace") as lines:
            for number, text in enumerate(lines):
                call = _parse_line(text.rstrip("\n"), rank, tid, number)
                if call is not None:
                    calls.append(call)
    return calls
