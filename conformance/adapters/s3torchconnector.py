"""AWS s3torchconnector's DCP storage (``S3StorageWriter``/``S3StorageReader``) on a bucket.

Configuration, from the environment (read on every rank, so set it before the run):

- ``CKPTCONF_S3_BUCKET`` (required): the bucket; the suite's checkpoint paths become keys
  under ``s3://BUCKET/CKPTCONF_S3_PREFIX``;
- ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``; default ``us-east-1``);
- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: another endpoint (MinIO, a local moto
  server); path-style addressing is then used unless ``CKPTCONF_S3_PATH_STYLE=0``;
- credentials the usual AWS way (both the connector's CRT client and boto3 read them).

The connector subclasses DCP's ``FileSystemWriter``/``FileSystemReader`` and is driven
by ``dcp.save``/``dcp.load`` with DCP's default planners, so it ``inherits`` torch-dcp's
known failures. The suite reads and corrupts its stored objects through boto3
(:class:`S3Objects`), not through the connector under test.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR
from ..stored import StoredObjects

__all__ = ["S3Objects", "S3Settings", "backend"]


@dataclass(frozen=True)
class S3Settings:
    """Where the checkpoints go, from the environment (see the module docstring)."""

    bucket: str
    prefix: str
    region: str
    endpoint: str | None
    path_style: bool

    @classmethod
    def from_environment(cls) -> S3Settings:
        bucket = os.environ.get("CKPTCONF_S3_BUCKET")
        if not bucket:
            raise RuntimeError(
                "backend 's3torchconnector': set CKPTCONF_S3_BUCKET to the bucket the suite may "
                "write checkpoints to (and AWS_ENDPOINT_URL for a local S3 server)"
            )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        style = os.environ.get("CKPTCONF_S3_PATH_STYLE", "1" if endpoint else "0")
        return cls(
            bucket=bucket,
            prefix=os.environ.get("CKPTCONF_S3_PREFIX", "").strip("/"),
            region=region or "us-east-1",
            endpoint=endpoint,
            path_style=style not in ("0", "false", "no", ""),
        )

    def key_prefix(self, path: str) -> str:
        """The key prefix of the checkpoint the suite calls ``path``, ending in ``/``."""
        parts = [self.prefix, str(path).strip("/")]
        return "/".join(p for p in parts if p) + "/"

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.key_prefix(path).rstrip('/')}"

    def client_config(self):
        from s3torchconnector import S3ClientConfig

        return S3ClientConfig(force_path_style=self.path_style)


class _Storage:
    """The writer or reader factory: ``S3StorageWriter`` or ``S3StorageReader`` for a path,
    all of them in a process sharing one S3 client (built on the first save or load, never
    pickled), as a training job's saves do rather than building a client each time."""

    def __init__(self, kind: str):
        self.kind = kind
        self._client = None

    def __getstate__(self) -> dict:
        return {"kind": self.kind, "_client": None}

    def __call__(self, path: str):
        from s3torchconnector._s3client import S3Client
        from s3torchconnector.dcp import S3StorageReader, S3StorageWriter

        settings = S3Settings.from_environment()
        if self._client is None:
            self._client = S3Client(settings.region, s3client_config=settings.client_config())
        kind = S3StorageWriter if self.kind == "writer" else S3StorageReader
        storage = kind(
            settings.region, settings.uri(path), s3client_config=settings.client_config()
        )
        if not hasattr(storage.fs, "_client"):  # the connector gives no argument for it
            raise RuntimeError(
                f"s3torchconnector {type(storage).__name__}.fs has no _client attribute to share "
                "a client through; this adapter needs updating for the installed connector"
            )
        storage.fs._client = self._client
        return storage


def _boto3_client(settings: S3Settings):
    """One boto3 client per process and settings (boto3's clients are thread-safe, not
    fork-safe: a forked process builds its own)."""
    return _boto3_client_of(settings, os.getpid())


@functools.lru_cache(maxsize=4)
def _boto3_client_of(settings: S3Settings, pid: int):
    import boto3
    from botocore.config import Config

    style = "path" if settings.path_style else "auto"
    return boto3.client(
        "s3",
        region_name=settings.region,
        endpoint_url=settings.endpoint,
        config=Config(s3={"addressing_style": style}),
    )


class S3Objects(StoredObjects):
    """The objects under a checkpoint's key prefix, through boto3."""

    def __init__(self, path: str, settings: S3Settings | None = None):
        self.settings = settings or S3Settings.from_environment()
        self.prefix = self.settings.key_prefix(path)
        self.client = _boto3_client(self.settings)

    def names(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=self.prefix
        )
        return sorted(o["Key"][len(self.prefix) :] for p in pages for o in p.get("Contents", []))

    def read(self, name: str) -> bytes:
        try:
            reply = self.client.get_object(Bucket=self.settings.bucket, Key=self.prefix + name)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"s3://{self.settings.bucket}/{self.prefix}{name}") from exc
        return reply["Body"].read()

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.settings.bucket, Key=self.prefix + name, Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.settings.bucket, Key=self.prefix + name)

    def size(self, name: str) -> int:
        head = self.client.head_object(Bucket=self.settings.bucket, Key=self.prefix + name)
        return head["ContentLength"]

    def where(self) -> str:
        return f"s3://{self.settings.bucket}/{self.prefix}"


def backend() -> Backend:
    """The s3torchconnector backend; checks the environment names a bucket."""
    from importlib.metadata import version

    S3Settings.from_environment()
    return Backend(
        name="s3torchconnector",
        storage_writer=_Storage("writer"),
        storage_reader=_Storage("reader"),
        stored_objects=S3Objects,
        description=f"s3torchconnector {version('s3torchconnector')} S3StorageWriter/Reader "
        "with DCP's default planners",
        expectations=str(EXPECTATIONS_DIR / "s3torchconnector.toml"),
        inherits="torch-dcp",
    )
