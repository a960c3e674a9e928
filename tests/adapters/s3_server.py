"""A local S3 server (moto) on 127.0.0.1 for the s3torchconnector adapter's tests."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

BUCKET = "ckptconf-test"


@contextlib.contextmanager
def local_s3() -> Iterator[dict[str, str]]:
    """Start ``moto.server`` on 127.0.0.1 (a free port it picks), create :data:`BUCKET`, and
    yield the environment the adapter needs; stop the server by its own process id."""
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in server.stderr:  # the line comes once the socket is bound
            lines.append(line)
            found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise RuntimeError(f"moto.server exited without serving: {''.join(lines)}")
        # the server logs every request to stderr: keep reading it, or a full pipe blocks it
        threading.Thread(target=collections.deque, args=(server.stderr, 50), daemon=True).start()
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{found.group(1)}",
            "CKPTCONF_S3_BUCKET": BUCKET,
        }
        import boto3

        client = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        client.create_bucket(Bucket=BUCKET)
        yield env
    finally:
        os.kill(server.pid, 15)
        server.wait(timeout=30)
