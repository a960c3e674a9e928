"""s3torchconnector 1.5.0 (its own finding on docs/backends.md): a re-save to the prefix of a
checkpoint that fails on rank 0 before rank 0's object is uploaded (rank 0 raising, or
SIGKILLed mid-write), while rank 1 uploads its own, leaves the previous .metadata beside rank
0's previous object and rank 1's new one (DCP names them __<rank>_0.distcp in every save): the
load returns the mix without an error. DCP's FileSystemWriter mixes them the same way when
rank 0 raises before writing (a torch DCP failure s3torchconnector inherits), but a rank 0
killed mid-write leaves its file cut short there, and the load raises; on S3 an object is
whole or absent, so nothing tells the load that the re-save failed.

Checkpoint A holds 1.0, the re-save B 2.0; w0 and v0 are rank 0's tensors, w1 and v1 rank 1's.
Two gloo ranks (torch.multiprocessing, a FileStore) save; this process loads. moto's S3 server
runs on 127.0.0.1 (a free port) in a thread of this process, stopped at the end. Exits 1 if
S3 loads mixed values without an error. Needs s3torchconnector[dcp], boto3 and moto[server]:
python s3torchconnector_failed_resave_mixes_objects.py (a few minutes: 8 rank processes)
"""

import logging
import os
import signal
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp


class RaisesOnRank0:
    """Mixed into a writer: rank 0's write_data fails before it writes anything."""

    def write_data(self, plan, planner):
        if dist.get_rank() == 0:
            raise RuntimeError("rank 0's storage failed")
        return super().write_data(plan, planner)


class KillsRank0MidWrite(dcp.DefaultSavePlanner):
    """Rank 0 SIGKILLs itself when its writer asks for its second item."""

    items = 0

    def resolve_data(self, write_item):
        self.items += 1
        if dist.get_rank() == 0 and self.items == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().resolve_data(write_item)


def storage(path, kind, fault=None):
    """s3torchconnector's writer or reader for an s3:// path, DCP's FileSystem one otherwise."""
    from s3torchconnector import S3ClientConfig
    from s3torchconnector.dcp import S3StorageReader, S3StorageWriter

    if path.startswith("s3://"):
        base = S3StorageWriter if kind == "writer" else S3StorageReader
        args = ("us-east-1", path)
        kwargs = {"s3client_config": S3ClientConfig(force_path_style=True)}
    else:
        base = dcp.FileSystemWriter if kind == "writer" else dcp.FileSystemReader
        args, kwargs = (path,), {}
    cls = type("Faulty", (RaisesOnRank0, base), {}) if fault == "raise" else base
    return cls(*args, **kwargs)


def rank_main(rank, path, fault, store_file, results):
    """Save A, then the re-save B with the fault; record what this rank's re-save did."""
    dist.init_process_group(
        "gloo", f"file://{store_file}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )

    def state(value):
        return {f"w{rank}": torch.full((2,), value), f"v{rank}": torch.full((2,), value)}

    dcp.save(state(1.0), storage_writer=storage(path, "writer"))  # A
    planner = KillsRank0MidWrite() if fault == "kill" else None
    try:
        dcp.save(state(2.0), storage_writer=storage(path, "writer", fault), planner=planner)  # B
        results[rank] = "completed"
    except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException
        results[rank] = f"raised {type(exc).__name__}"


def scenario(path, fault):
    """Both ranks' re-save outcomes, then what this process loads: per tensor, A or B (or the
    load's error)."""
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    store_file = tempfile.mktemp()
    ranks = [
        ctx.Process(target=rank_main, args=(r, path, fault, store_file, results)) for r in (0, 1)
    ]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=180)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
    saves = [results.get(r, f"died (exit code {p.exitcode})") for r, p in enumerate(ranks)]
    loaded = {k: torch.zeros(2) for k in ("w0", "v0", "w1", "v1")}
    try:
        dcp.load(loaded, storage_reader=storage(path, "reader"))
    except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException
        return saves, f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
    return saves, {k: {1.0: "A", 2.0: "B"}.get(t[0].item(), t.tolist()) for k, t in loaded.items()}


if __name__ == "__main__":
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server logs every request
    os.environ["PYTHONWARNINGS"] = "ignore"  # the ranks' warnings (DCP's "overwriting" one)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update(
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
        )
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ckpts")
        mixed = False
        for path, fault in (
            ("s3://ckpts/raise", "raise"),
            ("s3://ckpts/kill", "kill"),
            (tempfile.mkdtemp(), "raise"),
            (tempfile.mkdtemp(), "kill"),
        ):
            saves, loaded = scenario(path, fault)
            writer = "S3StorageWriter " if path.startswith("s3://") else "FileSystemWriter"
            how = "raises in write_data" if fault == "raise" else "SIGKILLed mid-write"
            print(f"{writer} re-save B, rank 0 {how}: rank 0 {saves[0]}, rank 1 {saves[1]}")
            print(f"    load: {loaded}")
            if writer.startswith("S3") and loaded == {"w0": "A", "v0": "A", "w1": "B", "v1": "B"}:
                mixed = True
        if mixed:
            print("BUG: S3 loaded A's values for rank 0's tensors, B's for rank 1's, no error")
    finally:
        server.stop()
    sys.exit(1 if mixed else 0)
