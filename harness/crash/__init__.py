"""Crash states of a save: record its file-system calls, model them, replay every prefix.

The engine behind the ``crash_states`` suite, usable on its own (the approach of ALICE,
Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014):

- :mod:`.recording`: a rank's system calls recorded with ``strace`` attached to its process.
- :mod:`.syscalls`: strace's output parsed into calls (one trace file per thread).
- :mod:`.operations`: the calls as file operations on paths (create, write, rename, fsync...).
- :mod:`.filetree`: a folder as a model, operations applied to it, what is durable.
- :mod:`.states`: the folder a crash leaves after each prefix, under a process crash and a
  power loss, built on disk to be loaded.
"""
