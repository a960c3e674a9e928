"""nvidia-resiliency-ext 0.4.1: its async save driver saves a Stateful value by pickling the object,
not through state_dict(), so DCP's load (which asks the object for state_dict()) cannot find its keys.
Runs without ckptconf: python nvrx_stateful.py"""

import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from nvidia_resiliency_ext.checkpointing.async_ckpt.filesystem_async import FileSystemWriterAsync
from nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver import (
    save_state_dict_async_finalize,
    save_state_dict_async_plan,
)


class App:  # DCP's Stateful protocol
    def __init__(self, w):
        self.w = w

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, state):
        self.w = state["w"]


if __name__ == "__main__":
    store = dist.FileStore(tempfile.mktemp(), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    path = tempfile.mkdtemp()
    writer, metadata, wrapper = save_state_dict_async_plan(
        {"app": App(torch.arange(3.0))},
        FileSystemWriterAsync(path, thread_count=1),
        None,
        planner=dcp.DefaultSavePlanner(),
    )
    write, _, args = writer.get_save_function_and_args()
    if write is not None:
        write(*args)
    save_state_dict_async_finalize(writer, metadata, wrapper)
    print("saved keys:", sorted(dcp.FileSystemReader(path).read_metadata().state_dict_metadata))
    dcp.save({"app": App(torch.arange(3.0))}, checkpoint_id=path + "-dcp")
    print(
        "dcp.save keys:",
        sorted(dcp.FileSystemReader(path + "-dcp").read_metadata().state_dict_metadata),
    )
    app = App(torch.zeros(3))
    try:
        dcp.load({"app": app}, checkpoint_id=path)
        print("loaded:", app.w)
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        print("load failed:", type(exc).__name__, str(exc).splitlines()[-1][:200])
    dist.destroy_process_group()
