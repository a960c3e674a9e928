"""From recorded system calls to :mod:`.filetree` operations on the checkpoint's folder.

Calls are merged across threads and ranks by entry time. Descriptors are followed
through open file descriptions, as the kernel does: ``dup`` shares a position, a thread
shares its process's table, a forked child gets a copy. Only calls that touch the folder
under ``root`` become operations; a call this model cannot replay exactly there (a write
through ``mmap``, ``sendfile`` into a file, a symlink, a descriptor opened before the
recording began) raises :class:`UnreplayableCall`, so the crash states are never built
from a trace that is known to be incomplete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .filetree import Create, FileTree, Link, Operation, Rename, Sync, Truncate, Unlink, Write
from .syscalls import Syscall, decode_string, descriptor, flag_names, iovec_data

__all__ = ["UnreplayableCall", "file_operations"]


class UnreplayableCall(Exception):
    """A recorded call under the checkpoint's folder that the model cannot replay."""


_PAGE = 4096
"""Writes are split at page boundaries: a crash can tear a write between two pages."""
_SYNCS = frozenset({"fsync", "fdatasync", "sync", "syncfs"})
"""Calls whose effect is only certain once they return: ordered by their end."""


@dataclass
class _Open:
    """An open file description: the node, the position, and how it was opened."""

    node: int
    path: str
    position: int = 0
    append: bool = False
    synced: bool = False
    """Opened O_SYNC or O_DSYNC: every write is durable when it returns."""


class _Interpreter:
    def __init__(self, root: str, tree: FileTree, cwd: dict[int, str]):
        self.root = os.path.realpath(root)
        self.tree = tree
        self.cwd = cwd
        # tid -> descriptor table; a rank's threads from before the recording share key -rank-1
        self.tables: dict[int, dict[int, _Open]] = {}
        self.operations: list[Operation] = []
        self.call: Syscall | None = None

    # --- helpers -------------------------------------------------------------------------------

    def relative(self, path: str | None) -> str | None:
        """``path`` relative to the root, or ``None`` if it lies outside."""
        if path is None:
            return None
        path = os.path.normpath(path.removesuffix(" (deleted)"))
        if path == self.root:
            return "."
        if path.startswith(self.root + os.sep):
            return path[len(self.root) + 1 :]
        return None

    def table(self) -> dict[int, _Open]:
        call = self.call
        return self.tables.setdefault(call.tid, self.tables.setdefault(-call.rank - 1, {}))

    def emit(self, operation: Operation) -> None:
        if not isinstance(operation, Create):  # a Create's node is already in the tree
            operation.apply(self.tree)
        self.operations.append(operation)

    def lookup(self, relative: str) -> int:
        """The node at ``relative``; refuses when the model has no such name (it has lost
        track of the folder: something changed it that the recording did not show)."""
        node = self.tree.lookup(relative)
        if node is None:
            raise self.refuse(f"{relative} is not in the recorded tree")
        return node

    def refuse(self, why: str) -> UnreplayableCall:
        call = self.call
        return UnreplayableCall(f"rank {call.rank}, thread {call.tid}: {call.name}: {why}")

    def at_path(self, dir_token: str | None, name_token: str) -> str:
        """The absolute path of ``name`` relative to a directory descriptor (or the cwd)."""
        name = os.fsdecode(decode_string(name_token))
        if name.startswith("/"):
            return name
        base = self.cwd[self.call.rank]
        if dir_token is not None:
            _, base = descriptor(dir_token)
            if base is None:
                raise self.refuse(f"a name relative to a descriptor without a path: {dir_token}")
        return os.path.join(base, name)

    def open_of(self, token: str) -> _Open | None:
        """The open file description of a descriptor argument under the root, else ``None``."""
        fd, path = descriptor(token)
        opened = self.table().get(fd)
        if opened is None and self.relative(path) is not None:
            raise self.refuse(f"descriptor {fd} ({path}) was opened before the recording began")
        return opened

    def parent_and_name(self, relative: str) -> tuple[int, str]:
        head, name = os.path.split(relative)
        parent = self.tree.lookup(head or ".")
        if parent is None:
            raise self.refuse(f"the folder of {relative} is not in the recorded tree")
        return parent, name

    # --- calls ---------------------------------------------------------------------------------

    def run(self, call: Syscall) -> None:
        self.call = call
        handler = getattr(self, f"on_{call.name}", None)
        if handler is not None:
            handler(call)

    def on_clone(self, call: Syscall) -> None:
        shares = any("CLONE_FILES" in argument for argument in call.args)
        self.tables[call.ret] = self.table() if shares else dict(self.table())

    on_clone3 = on_clone

    def on_fork(self, call: Syscall) -> None:
        self.tables[call.ret] = dict(self.table())

    on_vfork = on_fork

    def _opened(self, call: Syscall, path: str | None, flags: frozenset[str]) -> None:
        relative = self.relative(call.ret_path or path)
        self.table().pop(call.ret, None)
        if relative is None:
            return
        if "O_TMPFILE" in flags or "__O_TMPFILE" in flags:
            raise self.refuse(f"an O_TMPFILE file in {relative}")
        node = self.tree.lookup(relative)
        if node is None:
            if "O_CREAT" not in flags:
                raise self.refuse(f"opened {relative}, which is not in the recorded tree")
            parent, name = self.parent_and_name(relative)
            node = self.tree.add(parent, name, is_dir=False)
            self.emit(Create(call.rank, f"create {relative}", parent, name, node, False))
        elif "O_TRUNC" in flags and not self.tree.is_dir(node) and self.tree.size(node):
            self.emit(Truncate(call.rank, f"truncate {relative} to 0 bytes (O_TRUNC)", node, 0))
        self.table()[call.ret] = _Open(
            node,
            relative,
            append="O_APPEND" in flags,
            synced=bool({"O_SYNC", "O_DSYNC"} & flags),
        )

    def on_open(self, call: Syscall) -> None:
        self._opened(call, self.at_path(None, call.args[0]), flag_names(call.args[1]))

    def on_creat(self, call: Syscall) -> None:
        flags = frozenset({"O_CREAT", "O_TRUNC", "O_WRONLY"})
        self._opened(call, self.at_path(None, call.args[0]), flags)

    def on_openat(self, call: Syscall) -> None:
        self._opened(call, self.at_path(call.args[0], call.args[1]), flag_names(call.args[2]))

    def on_openat2(self, call: Syscall) -> None:
        how = call.args[2]
        flags = flag_names(how.split("flags=", 1)[1].split(",", 1)[0]) if "flags=" in how else ()
        self._opened(call, self.at_path(call.args[0], call.args[1]), frozenset(flags))

    def on_close(self, call: Syscall) -> None:
        fd, _ = descriptor(call.args[0])
        self.table().pop(fd, None)

    def on_close_range(self, call: Syscall) -> None:
        if len(call.args) > 2 and "CLOSE_RANGE_CLOEXEC" in call.args[2]:
            return  # marked close-on-exec, still open
        low, high = int(call.args[0]), int(call.args[1].split()[0], 0)
        for fd in [fd for fd in self.table() if low <= fd <= high]:
            del self.table()[fd]

    def _duplicate(self, call: Syscall, new_fd: int) -> None:
        fd, _ = descriptor(call.args[0])
        opened = self.table().get(fd)
        self.table().pop(new_fd, None)
        if opened is not None:
            self.table()[new_fd] = opened

    def on_dup(self, call: Syscall) -> None:
        self._duplicate(call, call.ret)

    on_dup2 = on_dup3 = on_dup

    def on_fcntl(self, call: Syscall) -> None:
        if call.args[1].startswith("F_DUPFD"):
            self._duplicate(call, call.ret)
        elif call.args[1] == "F_SETFL":
            opened = self.table().get(descriptor(call.args[0])[0])
            if opened is not None:
                flags = flag_names(call.args[2])
                opened.append = "O_APPEND" in flags

    def on_lseek(self, call: Syscall) -> None:
        fd, _ = descriptor(call.args[0])
        opened = self.table().get(fd)
        if opened is not None:
            opened.position = call.ret

    def on_read(self, call: Syscall) -> None:
        fd, _ = descriptor(call.args[0])
        opened = self.table().get(fd)
        if opened is not None:
            opened.position += call.ret

    on_readv = on_read

    def _write(self, call: Syscall, data_of, offset: int | None, *, synced: bool = False) -> None:
        """A write of ``data_of()`` (decoded only for a file under the root) at ``offset``, or
        at the position; split at page boundaries, then made durable if ``synced``."""
        opened = self.open_of(call.args[0])
        if opened is None:
            return
        data = data_of()[: call.ret]
        if offset is None or opened.append:  # Linux's pwrite on an O_APPEND file appends
            start = self.tree.size(opened.node) if opened.append else opened.position
            if offset is None:
                opened.position = start + len(data)
            offset = start
        end = offset + len(data)
        cut = offset
        while cut < end:
            step = min(end, (cut // _PAGE + 1) * _PAGE)
            piece = data[cut - offset : step - offset]
            self.emit(
                Write(
                    call.rank,
                    f"write {len(piece)} bytes at offset {cut} of {opened.path}",
                    opened.node,
                    cut,
                    piece,
                )
            )
            cut = step
        if data and (synced or opened.synced):
            self.emit(Sync(call.rank, f"(O_SYNC/RWF_SYNC) sync of {opened.path}", opened.node))

    def on_write(self, call: Syscall) -> None:
        self._write(call, lambda: decode_string(call.args[1]), None)

    def on_pwrite64(self, call: Syscall) -> None:
        self._write(call, lambda: decode_string(call.args[1]), int(call.args[3]))

    def on_writev(self, call: Syscall) -> None:
        self._write(call, lambda: iovec_data(call.args[1]), None)

    def on_pwritev(self, call: Syscall) -> None:
        offset = int(call.args[3])
        flags = flag_names(call.args[4]) if len(call.args) > 4 else frozenset()
        if "RWF_APPEND" in flags and self.open_of(call.args[0]) is not None:
            raise self.refuse("pwritev2 with RWF_APPEND")
        synced = bool({"RWF_SYNC", "RWF_DSYNC"} & flags)
        self._write(
            call, lambda: iovec_data(call.args[1]), None if offset == -1 else offset, synced=synced
        )

    on_pwritev2 = on_pwritev

    def on_ftruncate(self, call: Syscall) -> None:
        opened = self.open_of(call.args[0])
        if opened is not None:
            length = int(call.args[1])
            self.emit(
                Truncate(
                    call.rank, f"truncate {opened.path} to {length} bytes", opened.node, length
                )
            )

    def on_truncate(self, call: Syscall) -> None:
        relative = self.relative(self.at_path(None, call.args[0]))
        if relative is not None:
            node = self.lookup(relative)
            length = int(call.args[1])
            self.emit(Truncate(call.rank, f"truncate {relative} to {length} bytes", node, length))

    def on_fallocate(self, call: Syscall) -> None:
        opened = self.open_of(call.args[0])
        if opened is None:
            return
        mode, offset, length = call.args[1], int(call.args[2]), int(call.args[3])
        if mode.strip() not in ("0", "FALLOC_FL_KEEP_SIZE"):
            raise self.refuse(f"fallocate mode {mode} on {opened.path}")
        if mode.strip() == "0" and offset + length > self.tree.size(opened.node):
            self.emit(
                Truncate(
                    call.rank,
                    f"extend {opened.path} to {offset + length} bytes",
                    opened.node,
                    offset + length,
                )
            )

    def on_mmap(self, call: Syscall) -> None:
        prot, flags = flag_names(call.args[2]), flag_names(call.args[3])
        if "PROT_WRITE" in prot and "MAP_SHARED" in flags and self.open_of(call.args[4]):
            raise self.refuse("a file mapped writable and shared: its writes are not system calls")

    def on_io_uring_setup(self, call: Syscall) -> None:
        raise self.refuse("io_uring: the file operations it makes are not system calls")

    def on_io_submit(self, call: Syscall) -> None:
        raise self.refuse("Linux AIO (io_submit): its writes are not recorded")

    def _refuse_into(self, call: Syscall, fd_argument: int) -> None:
        opened = self.open_of(call.args[fd_argument])
        if opened is not None:
            raise self.refuse(f"data copied into {opened.path} in the kernel (not recorded)")

    def on_copy_file_range(self, call: Syscall) -> None:
        self._refuse_into(call, 2)

    def on_sendfile(self, call: Syscall) -> None:
        self._refuse_into(call, 0)

    def on_splice(self, call: Syscall) -> None:
        self._refuse_into(call, 2)

    def _rename(self, source: str, target: str, flags: frozenset[str]) -> None:
        source_relative, target_relative = self.relative(source), self.relative(target)
        if source_relative is None and target_relative is None:
            return
        if source_relative is None or target_relative is None:
            raise self.refuse(f"a rename across the checkpoint's folder: {source} -> {target}")
        self.lookup(source_relative)
        source_parent, source_name = self.parent_and_name(source_relative)
        target_parent, target_name = self.parent_and_name(target_relative)
        exchange = "RENAME_EXCHANGE" in flags
        verb = "exchange" if exchange else "rename"
        self.emit(
            Rename(
                self.call.rank,
                f"{verb} {source_relative} {'and' if exchange else 'to'} {target_relative}",
                source_parent,
                source_name,
                target_parent,
                target_name,
                exchange,
            )
        )

    def on_rename(self, call: Syscall) -> None:
        self._rename(
            self.at_path(None, call.args[0]), self.at_path(None, call.args[1]), frozenset()
        )

    def on_renameat(self, call: Syscall) -> None:
        flags = flag_names(call.args[4]) if len(call.args) > 4 else frozenset()
        self._rename(
            self.at_path(call.args[0], call.args[1]),
            self.at_path(call.args[2], call.args[3]),
            flags,
        )

    on_renameat2 = on_renameat

    def _unlink(self, path: str) -> None:
        relative = self.relative(path)
        if relative is not None:
            parent, name = self.parent_and_name(relative)
            kind = "folder" if self.tree.is_dir(self.lookup(relative)) else "file"
            self.emit(Unlink(self.call.rank, f"remove {kind} {relative}", parent, name))

    def on_unlink(self, call: Syscall) -> None:
        self._unlink(self.at_path(None, call.args[0]))

    on_rmdir = on_unlink

    def on_unlinkat(self, call: Syscall) -> None:
        self._unlink(self.at_path(call.args[0], call.args[1]))

    def _mkdir(self, path: str) -> None:
        relative = self.relative(path)
        if relative is not None:
            parent, name = self.parent_and_name(relative)
            node = self.tree.add(parent, name, is_dir=True)
            self.emit(Create(self.call.rank, f"create folder {relative}", parent, name, node, True))

    def on_mkdir(self, call: Syscall) -> None:
        self._mkdir(self.at_path(None, call.args[0]))

    def on_mkdirat(self, call: Syscall) -> None:
        self._mkdir(self.at_path(call.args[0], call.args[1]))

    def _link(self, source: str, target: str) -> None:
        source_relative, target_relative = self.relative(source), self.relative(target)
        if target_relative is None:
            return
        if source_relative is None:
            raise self.refuse(f"a hard link into the checkpoint's folder from {source}")
        parent, name = self.parent_and_name(target_relative)
        node = self.lookup(source_relative)
        self.emit(
            Link(self.call.rank, f"link {target_relative} to {source_relative}", parent, name, node)
        )

    def on_link(self, call: Syscall) -> None:
        self._link(self.at_path(None, call.args[0]), self.at_path(None, call.args[1]))

    def on_linkat(self, call: Syscall) -> None:
        self._link(
            self.at_path(call.args[0], call.args[1]), self.at_path(call.args[2], call.args[3])
        )

    def on_symlink(self, call: Syscall) -> None:
        if self.relative(self.at_path(None, call.args[1])) is not None:
            raise self.refuse("a symbolic link in the checkpoint's folder")

    def on_symlinkat(self, call: Syscall) -> None:
        if self.relative(self.at_path(call.args[1], call.args[2])) is not None:
            raise self.refuse("a symbolic link in the checkpoint's folder")

    def on_fsync(self, call: Syscall) -> None:
        opened = self.open_of(call.args[0])
        if opened is not None:
            kind = "folder" if self.tree.is_dir(opened.node) else "file"
            path = "the top folder" if opened.path == "." else f"{kind} {opened.path}"
            self.emit(Sync(call.rank, f"{call.name} of {path}", opened.node))

    on_fdatasync = on_fsync

    def on_sync(self, call: Syscall) -> None:
        self.emit(Sync(call.rank, "sync (every file system)", None))

    def on_syncfs(self, call: Syscall) -> None:
        if self.open_of(call.args[0]) is not None:  # the file system holding the folder
            self.emit(Sync(call.rank, "syncfs", None))


def file_operations(
    calls: Iterable[Syscall], root: str, tree: FileTree, cwd: dict[int, str]
) -> list[Operation]:
    """The operations the calls made under ``root``, in the order they started.

    ``tree`` is the folder as it was when the recording began (it is changed to the end
    state); ``cwd`` is each rank's working folder. Raises :class:`UnreplayableCall`.
    """
    interpreter = _Interpreter(root, tree, cwd)
    # an fsync's effect is certain only once it returned: it is placed at its end
    order = sorted(
        calls, key=lambda c: (c.end if c.name in _SYNCS else c.time, c.rank, c.tid, c.line)
    )
    for call in order:
        interpreter.run(call)
    return interpreter.operations
