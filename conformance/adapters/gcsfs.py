"""torch DCP's ``FsspecWriter``/``FsspecReader`` on Google Cloud Storage through gcsfs
(``gs://`` URLs), the way DCP users (and torchtitan's remote checkpoint folders) write to GCS.

Configuration, from the environment (read on every rank, so set it before the run):

- ``CKPTCONF_GCS_BUCKET`` (required): the bucket; the suite's checkpoint paths become object
  prefixes under ``gs://BUCKET/CKPTCONF_GCS_PREFIX``;
- ``STORAGE_EMULATOR_HOST``: a GCS emulator's URL (``http://127.0.0.1:PORT``, as the tests
  start ``gcp-storage-emulator``); gcsfs and google-cloud-storage both honour it, and the
  adapter then uses anonymous credentials;
- otherwise Google's default credentials (gcsfs ``token=None``).

Everything but the storage is DCP's (``dcp.save``/``dcp.load``, default planners; FsspecWriter
subclasses FileSystemWriter), so the backend ``inherits`` torch-dcp's known failures. The
suite reads and corrupts the stored objects through google-cloud-storage's client
(:class:`GcsObjects`), not through gcsfs, the client under test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR, _DcpCheckpointer
from ..stored import StoredObjects

__all__ = ["GcsObjects", "GcsSettings", "backend"]


@dataclass(frozen=True)
class GcsSettings:
    """Where the checkpoints go, from the environment (see the module docstring)."""

    bucket: str
    prefix: str
    emulator: str | None

    @classmethod
    def from_environment(cls) -> GcsSettings:
        bucket = os.environ.get("CKPTCONF_GCS_BUCKET")
        if not bucket:
            raise RuntimeError(
                "backend 'gcsfs': set CKPTCONF_GCS_BUCKET to the bucket the suite may write "
                "checkpoints to (and STORAGE_EMULATOR_HOST for a local GCS emulator)"
            )
        return cls(
            bucket=bucket,
            prefix=os.environ.get("CKPTCONF_GCS_PREFIX", "").strip("/"),
            emulator=os.environ.get("STORAGE_EMULATOR_HOST") or None,
        )

    def key_prefix(self, path: str) -> str:
        """The object prefix of the checkpoint the suite calls ``path``, ending in ``/``."""
        parts = [self.prefix, str(path).strip("/")]
        return "/".join(p for p in parts if p) + "/"

    def uri(self, path: str) -> str:
        return f"gs://{self.bucket}/{self.key_prefix(path).rstrip('/')}"

    def fs_options(self) -> dict:
        """gcsfs's options: anonymous against an emulator, default credentials otherwise."""
        return {"token": "anon"} if self.emulator else {}


def _writer(path: str):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    settings = GcsSettings.from_environment()
    return FsspecWriter(settings.uri(path), **settings.fs_options())


def _reader(path: str):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    settings = GcsSettings.from_environment()
    return FsspecReader(settings.uri(path), **settings.fs_options())


class GcsObjects(StoredObjects):
    """The objects under a checkpoint's prefix, through google-cloud-storage's client."""

    def __init__(self, path: str, settings: GcsSettings | None = None):
        from google.cloud import storage

        self.settings = settings or GcsSettings.from_environment()
        self.prefix = self.settings.key_prefix(path)
        if self.settings.emulator:
            client = storage.Client.create_anonymous_client()
            client.project = "ckptconf"
        else:
            client = storage.Client()
        self.bucket = client.bucket(self.settings.bucket)
        self.client = client

    def names(self) -> list[str]:
        blobs = self.client.list_blobs(self.settings.bucket, prefix=self.prefix)
        return sorted(b.name[len(self.prefix) :] for b in blobs)

    def read(self, name: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self.bucket.blob(self.prefix + name).download_as_bytes()
        except NotFound as exc:
            raise FileNotFoundError(f"gs://{self.settings.bucket}/{self.prefix}{name}") from exc

    def write(self, name: str, data: bytes) -> None:
        self.bucket.blob(self.prefix + name).upload_from_string(data)

    def delete(self, name: str) -> None:
        self.bucket.blob(self.prefix + name).delete()

    def size(self, name: str) -> int:
        blob = self.bucket.get_blob(self.prefix + name)
        if blob is None:
            raise FileNotFoundError(f"gs://{self.settings.bucket}/{self.prefix}{name}")
        return blob.size

    def where(self) -> str:
        return f"gs://{self.settings.bucket}/{self.prefix}"


def backend() -> Backend:
    """DCP's fsspec storage on GCS through gcsfs; checks the environment names a bucket."""
    from importlib.metadata import version

    GcsSettings.from_environment()
    return Backend(
        name="gcsfs",
        storage_writer=_writer,
        storage_reader=_reader,
        checkpointer=_DcpCheckpointer(_writer, _reader),
        stored_objects=GcsObjects,
        description=f"gcsfs {version('gcsfs')} (gs://) under DCP's FsspecWriter/FsspecReader "
        "with DCP's default planners",
        expectations=str(EXPECTATIONS_DIR / "gcsfs.toml"),
        inherits="torch-dcp",
    )
