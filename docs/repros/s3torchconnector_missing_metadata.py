"""s3torchconnector 1.5.0 (its own finding on docs/backends.md): loading a prefix that holds no
checkpoint yet (a job loading while the first save still runs) fails with an error that names
neither the bucket nor the key; DCP's FileSystemReader names the missing file.

Runs without ckptconf: starts moto's S3 server on 127.0.0.1 (a free port), stops it by its
process id. Needs s3torchconnector[dcp], boto3 and moto[server]: python s3torchconnector_missing_metadata.py
"""

import os
import re
import subprocess
import sys
import tempfile

import torch
import torch.distributed.checkpoint as dcp

if __name__ == "__main__":
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in server.stderr:  # printed once the socket is bound
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        os.environ.update(
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=found.group(1),
        )
        import boto3
        from s3torchconnector import S3ClientConfig
        from s3torchconnector.dcp import S3StorageReader

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ckpts")
        for name, reader in (
            (
                "S3StorageReader",
                S3StorageReader(
                    "us-east-1",
                    "s3://ckpts/step-100",
                    s3client_config=S3ClientConfig(force_path_style=True),
                ),
            ),
            (
                "FileSystemReader",
                dcp.FileSystemReader(os.path.join(tempfile.mkdtemp(), "step-100")),
            ),
        ):
            try:
                dcp.load({"w": torch.zeros(2)}, storage_reader=reader)
            except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException
                print(f"{name}: {str(exc).strip().splitlines()[-1][:300]}")
    finally:
        os.kill(server.pid, 15)
        server.wait(timeout=30)
