"""torch DCP (finding 33 of docs/dcp-findings.md): async_save with a storage writer that stages
itself (FileSystemWriter is an AsyncStager) rebuilds every tuple as tuple(...), so a torch.Size
or a namedtuple object is saved as a plain tuple; dcp.save keeps it (and so does
async_save(checkpoint_id=...), which stages with DefaultStager).
Runs without ckptconf, on one process: python dcp_async_save_tuple_subclass.py"""

import collections
import tempfile

import torch
import torch.distributed.checkpoint as dcp

Point = collections.namedtuple("Point", "x y")

if __name__ == "__main__":
    for how in ("save", "async_save"):
        path = tempfile.mkdtemp()
        state = {"size": torch.Size([2, 3]), "point": Point(1, 2), "t": torch.zeros(2)}
        if how == "save":
            dcp.save(state, storage_writer=dcp.FileSystemWriter(path))
        else:
            dcp.async_save(state, storage_writer=dcp.FileSystemWriter(path)).result()
        loaded = {"size": None, "point": None, "t": torch.ones(2)}
        dcp.load(loaded, checkpoint_id=path)
        print(f"{how:10}: size {loaded['size']!r}, point {loaded['point']!r}")
