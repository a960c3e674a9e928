"""A model of one folder tree: what a process sees, and what a power loss would leave.

Every file and folder is a node with its current contents and its *durable* contents:
the contents at its last ``fsync``/``fdatasync`` (a file's bytes; a folder's names), or
as they were when the recording began. A process crash leaves what the process saw (the
page cache survives); a power loss leaves only what was made durable, which is the
abstract persistence model of ALICE (Pillai et al., "All File Systems Are Not Created
Equal", OSDI '14) at its strictest: no write, create or rename survives without the
fsync that POSIX asks for.

The operations (:class:`Create`, :class:`Write`, :class:`Rename`, ...) refer to nodes by
number, so a crash state is built by replaying a prefix of them on a fresh copy of the
tree the recording started from.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Create",
    "FileTree",
    "Files",
    "Link",
    "Operation",
    "Rename",
    "Sync",
    "Truncate",
    "Unlink",
    "Write",
]

Files = dict[str, bytes | None]
"""A folder's contents: relative path (``/``-separated) to a file's bytes, or ``None`` for a
folder."""


@dataclass(eq=False)
class _Node:
    number: int
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)
    durable_data: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    durable_entries: dict[str, int] = field(default_factory=dict)


class FileTree:
    """A folder tree whose root is node 0; nodes are numbered in creation order."""

    def __init__(self) -> None:
        self.nodes: dict[int, _Node] = {0: _Node(0, True)}

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> FileTree:
        """The tree under ``root`` as it is now, all of it durable (numbered in sorted order)."""
        tree = cls()
        root = Path(root)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            parent = tree.lookup(os.path.relpath(folder, root))
            for name in dirs:
                tree.add(parent, name, is_dir=True)
            for name in sorted(files):
                node = tree.add(parent, name, is_dir=False)
                tree.nodes[node].data[:] = (Path(folder) / name).read_bytes()
        tree.sync_all()
        return tree

    def copy(self) -> FileTree:
        """An independent copy."""
        other = FileTree()
        other.nodes = {
            n: _Node(
                n,
                node.is_dir,
                bytearray(node.data),
                node.durable_data,
                dict(node.entries),
                dict(node.durable_entries),
            )
            for n, node in self.nodes.items()
        }
        return other

    # --- names ---------------------------------------------------------------------------------

    def lookup(self, relative: str) -> int | None:
        """The node at ``relative`` (``.`` is the root), or ``None``."""
        node = 0
        for part in Path(relative).parts:
            if part == ".":
                continue
            entries = self.nodes[node].entries
            if part not in entries:
                return None
            node = entries[part]
        return node

    def add(self, parent: int, name: str, *, is_dir: bool) -> int:
        """A new empty node named ``name`` in folder ``parent``; its number."""
        number = max(self.nodes) + 1
        self.nodes[number] = _Node(number, is_dir)
        self.nodes[parent].entries[name] = number
        return number

    def is_dir(self, node: int) -> bool:
        return self.nodes[node].is_dir

    def size(self, node: int) -> int:
        return len(self.nodes[node].data)

    # --- durability ----------------------------------------------------------------------------

    def sync(self, node: int) -> None:
        """``fsync`` of ``node``: its bytes, or its names, become durable."""
        n = self.nodes[node]
        n.durable_data = bytes(n.data)
        n.durable_entries = dict(n.entries)

    def sync_all(self) -> None:
        """``sync``: everything becomes durable."""
        for node in self.nodes:
            self.sync(node)

    # --- what is left --------------------------------------------------------------------------

    def visible(self) -> Files:
        """What a process sees now (and what a process crash leaves)."""
        return self._walk()

    def durable(self) -> Files:
        """What a power loss now would leave, if nothing unsynced reached the disk."""
        return self._walk(durable_names=True, durable_data=True)

    def names_first(self) -> Files:
        """What a power loss now would leave if every change of names (create, rename, unlink)
        reached the disk but no unsynced data did: the reordering that gives zero-length
        files after a rename (ALICE's "atomicity of rename" vulnerabilities)."""
        return self._walk(durable_names=False, durable_data=True)

    def _walk(self, *, durable_names: bool = False, durable_data: bool = False) -> Files:
        out: Files = {}
        stack, seen = [(0, "")], {0}
        while stack:
            number, prefix = stack.pop()
            node = self.nodes[number]
            entries = node.durable_entries if durable_names else node.entries
            for name, child in sorted(entries.items()):
                path = f"{prefix}{name}"
                target = self.nodes[child]
                if target.is_dir:
                    if child in seen:  # a folder synced into two places by separate fsyncs
                        continue
                    seen.add(child)
                    out[path] = None
                    stack.append((child, path + "/"))
                else:
                    out[path] = target.durable_data if durable_data else bytes(target.data)
        return out


@dataclass(frozen=True)
class Operation(ABC):
    """One change to a :class:`FileTree`, made by one rank's thread, described in words."""

    rank: int
    words: str

    @abstractmethod
    def apply(self, tree: FileTree) -> None:
        """Make the change."""

    @property
    def durability(self) -> bool:
        """Whether the operation only makes something durable (an ``fsync``)."""
        return False

    @property
    def naming(self) -> bool:
        """Whether the operation changes a folder's names (create, rename, unlink, link)."""
        return False


@dataclass(frozen=True)
class Create(Operation):
    parent: int
    name: str
    node: int
    is_dir: bool

    def apply(self, tree: FileTree) -> None:
        tree.nodes[self.node] = _Node(self.node, self.is_dir)
        tree.nodes[self.parent].entries[self.name] = self.node

    @property
    def naming(self) -> bool:
        return True


@dataclass(frozen=True)
class Write(Operation):
    node: int
    offset: int
    data: bytes

    def apply(self, tree: FileTree) -> None:
        data = tree.nodes[self.node].data
        end = self.offset + len(self.data)
        if len(data) < self.offset:
            data.extend(bytes(self.offset - len(data)))
        data[self.offset : end] = self.data


@dataclass(frozen=True)
class Truncate(Operation):
    node: int
    length: int

    def apply(self, tree: FileTree) -> None:
        data = tree.nodes[self.node].data
        if len(data) > self.length:
            del data[self.length :]
        else:
            data.extend(bytes(self.length - len(data)))


@dataclass(frozen=True)
class Rename(Operation):
    source_parent: int
    source_name: str
    target_parent: int
    target_name: str
    exchange: bool = False

    def apply(self, tree: FileTree) -> None:
        source = tree.nodes[self.source_parent].entries
        target = tree.nodes[self.target_parent].entries
        moved = source.pop(self.source_name)
        if self.exchange:
            source[self.source_name] = target[self.target_name]
        target[self.target_name] = moved

    @property
    def naming(self) -> bool:
        return True


@dataclass(frozen=True)
class Unlink(Operation):
    parent: int
    name: str

    def apply(self, tree: FileTree) -> None:
        del tree.nodes[self.parent].entries[self.name]

    @property
    def naming(self) -> bool:
        return True


@dataclass(frozen=True)
class Link(Operation):
    parent: int
    name: str
    node: int

    def apply(self, tree: FileTree) -> None:
        tree.nodes[self.parent].entries[self.name] = self.node

    @property
    def naming(self) -> bool:
        return True


@dataclass(frozen=True)
class Sync(Operation):
    node: int | None
    """The node made durable; ``None`` for ``sync()`` (everything)."""

    def apply(self, tree: FileTree) -> None:
        if self.node is None:
            tree.sync_all()
        else:
            tree.sync(self.node)

    @property
    def durability(self) -> bool:
        return True
