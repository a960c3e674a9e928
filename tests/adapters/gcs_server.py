"""A local GCS emulator (gcp-storage-emulator, in memory) on 127.0.0.1 for the gcsfs
adapter's tests.

Run as a script it serves until SIGTERM: it binds a free port on 127.0.0.1, creates the
bucket, prints the port on one line of stdout, then waits for the signal. :func:`local_gcs`
starts it, reads the port, and stops it by its own process id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

BUCKET = "ckptconf-test"


def serve(bucket: str) -> None:
    """Serve in this process (in memory) until SIGTERM; print the bound port first."""
    from gcp_storage_emulator.server import create_server

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    server.start()  # returns once the socket is bound
    print(server._api._httpd.server_address[1], flush=True)
    stop.wait()
    server.stop()


@contextlib.contextmanager
def local_gcs() -> Iterator[dict[str, str]]:
    """Start the emulator on 127.0.0.1 (a free port it binds), with :data:`BUCKET`, and yield
    the environment the adapter needs; stop the server by its own process id."""
    server = subprocess.Popen(
        [sys.executable, __file__, BUCKET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # it logs every request
        text=True,
    )
    try:
        line = server.stdout.readline()  # the port, once the socket is bound and bucket made
        if not line.strip().isdigit():
            raise RuntimeError(f"the GCS emulator exited without serving (rc {server.poll()})")
        yield {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{line.strip()}",
            "CKPTCONF_GCS_BUCKET": BUCKET,
        }
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    serve(sys.argv[1])
