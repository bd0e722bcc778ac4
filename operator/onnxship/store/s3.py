"""The S3 store (AWS, MinIO, Ceph, moto...) through boto3.

- Uploads go through boto3's transfer manager (multipart above ``MULTIPART``), with an S3
  SHA-256 checksum per part and our own SHA-256 over the bytes actually read; an object only
  becomes visible when its upload completes, so a crash leaves nothing under the blob's key.
- Large plain blobs download as parallel ranged GETs that are hashed and written in order
  (a bounded window of parts in flight), so the digest is verified while streaming.
- Throttling and 5xx are retried by botocore's "standard" mode (exponential backoff, jitter).
- Credentials come from explicit keys (a Secret's) or boto3's usual chain (env, profile, IMDS);
  they are never logged or shown in errors.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
import botocore.session
import zstandard
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from onnxship.api import Blob

from .content import ContentStore
from .digests import ZSTD_LEVEL, CountingReader, HashingReader, check_sent
from .errors import StoreAccessDenied, StoreError, StoreNotFound, StoreUnavailable
from .layout import MANIFESTS, blob_key
from .progress import Progress

MULTIPART = 64 * 1024 * 1024
PART = 16 * 1024 * 1024
CONCURRENCY = 4
RANGE_WINDOW = 8  # parts in flight while downloading: bounds memory to WINDOW * PART
MAX_ATTEMPTS = 8  # botocore "standard" retries: throttling, 5xx, dropped connections


@dataclass(frozen=True)
class S3Credentials:
    """Explicit S3 keys (e.g. from a Kubernetes Secret). The secret never appears in repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{uri!r}: an S3 URI is s3://bucket/prefix/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(
    endpoint: str = "", region: str = "", credentials: S3Credentials | None = None
) -> Any:
    """A boto3 S3 client with retries for throttling and 5xx and path-style custom endpoints."""
    config = Config(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        # MinIO and Ceph are usually reached by address, where virtual-host style cannot work.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if region:
        kwargs["region_name"] = region
    elif endpoint:
        kwargs["region_name"] = "us-east-1"
    if credentials is not None:
        kwargs["aws_access_key_id"] = credentials.access_key_id
        kwargs["aws_secret_access_key"] = credentials.secret_access_key
        if credentials.session_token:
            kwargs["aws_session_token"] = credentials.session_token
    return _session().client("s3", **kwargs)


# botocore's Loader, one for the process: its cache holds the parsed S3 service model.
_loader: Any = None
_loader_lock = threading.Lock()


def _session() -> boto3.session.Session:
    """A new boto3 Session (credentials still resolve per session) on the process's one
    botocore loader. A Session of its own parses the S3 service model again: ~12 MB a client,
    and the operator keeps a client per store and credentials (issue 21)."""
    global _loader
    with _loader_lock:
        core = botocore.session.get_session()
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
        session = boto3.session.Session(botocore_session=core)
        # boto3 appends its data folder to the loader's search paths on every Session.
        _loader.search_paths[:] = list(dict.fromkeys(_loader.search_paths))
        return session


def explain(exc: Exception, where: str) -> StoreError:
    """A boto error as the StoreError a user can act on."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, NoCredentialsError):
        return StoreAccessDenied(
            f"{where}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or a credentialsSecret)"
        )
    if isinstance(exc, EndpointConnectionError):
        return StoreUnavailable(
            f"{where}: cannot reach the S3 endpoint ({exc.kwargs.get('endpoint_url', '')})"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            return StoreNotFound(
                f"{where}: the bucket does not exist (NoSuchBucket); create it or fix the URI"
            )
        if code in {
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "403",
            "AllAccessDisabled",
        }:
            return StoreAccessDenied(
                f"{where}: access denied ({code}); check the credentials and bucket policy"
            )
        if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
            return StoreUnavailable(f"{where}: S3 answered {code or status} after retries")
        return StoreError(
            f"{where}: S3 error {code or status}: {err.get('Message', '')}".rstrip(": ")
        )
    if isinstance(exc, BotoCoreError):
        return StoreUnavailable(f"{where}: {exc}")
    return StoreError(f"{where}: {exc}")


def _missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def ranged_get(client: Any, bucket: str, key: str, size: int) -> Iterator[bytes]:
    """An object's bytes in order, fetched as parallel ranged GETs of ``PART`` bytes (at most
    ``RANGE_WINDOW`` parts in flight, so memory stays bounded whatever the size)."""

    def part(start: int) -> bytes:
        end = min(size, start + PART) - 1
        obj = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
        return bytes(obj["Body"].read())

    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="s3-range") as pool:
        window: deque[Future[bytes]] = deque()
        for start in range(0, size, PART):
            window.append(pool.submit(part, start))
            if len(window) >= RANGE_WINDOW:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class S3Store(ContentStore):
    """An artifact store under ``s3://bucket/prefix/``."""

    def __init__(self, uri: str, client: Any) -> None:
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self._s3 = client
        self._bucket_checked = False
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART, multipart_chunksize=PART, max_concurrency=CONCURRENCY
        )

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _check_bucket(self) -> None:
        # HEAD answers a bare 404 for a missing bucket and a missing key alike; ask once.
        if self._bucket_checked:
            return
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreNotFound(
                    f"s3://{self.bucket}: the bucket does not exist (NoSuchBucket); "
                    "create it or fix the URI"
                ) from None
            raise explain(exc, f"s3://{self.bucket}") from None
        except Exception as exc:
            raise explain(exc, f"s3://{self.bucket}") from None
        self._bucket_checked = True

    def _find_blob(self, digest: str) -> tuple[str, int] | None:
        self._check_bucket()
        for encoding in ("identity", "zstd"):
            key = self.prefix + blob_key(digest, encoding)
            try:
                head = self._s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    continue
                raise explain(exc, self._where(blob_key(digest, encoding))) from None
            except Exception as exc:
                raise explain(exc, self._where(blob_key(digest, encoding))) from None
            return encoding, int(head["ContentLength"])
        return None

    def _put_blob(self, path: Path, blob: Blob, encoding: str, progress: Progress) -> int:
        self._check_bucket()
        key = self.prefix + blob_key(blob.digest, encoding)
        task = f"upload {blob.name}"
        extra = {
            "ChecksumAlgorithm": "SHA256",
            "Metadata": {"onnxship-sha256": blob.digest, "onnxship-size": str(blob.size)},
        }
        try:
            with path.open("rb") as src:
                reader = HashingReader(src, lambda n: progress(task, n, blob.size))
                body: HashingReader | CountingReader = reader
                if encoding == "zstd":
                    body = CountingReader(
                        zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(
                            cast(BinaryIO, reader)
                        )
                    )
                self._s3.upload_fileobj(
                    body, self.bucket, key, ExtraArgs=extra, Config=self._transfer
                )
        except Exception as exc:
            raise explain(exc, self._where(key.removeprefix(self.prefix))) from None
        try:
            check_sent(blob, reader)
        except StoreError:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
            raise
        return body.size

    def _read_blob(self, blob: Blob) -> Iterator[bytes]:
        key = self.prefix + blob_key(blob.digest, blob.encoding)
        where = self._where(key.removeprefix(self.prefix))
        try:
            if blob.encoding == "identity" and blob.stored_size > MULTIPART:
                yield from self._ranged(key, blob.stored_size)
                return
            body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            yield from body.iter_chunks(1024 * 1024)
        except ClientError as exc:
            if _missing(exc):
                raise StoreError(
                    f"{where}: blob {blob.name} named by the manifest is missing from the store"
                ) from None
            raise explain(exc, where) from None
        except (BotoCoreError, OSError) as exc:
            raise explain(exc, where) from None

    def _ranged(self, key: str, size: int) -> Iterator[bytes]:
        return ranged_get(self._s3, self.bucket, key, size)

    def _get_text(self, key: str) -> str | None:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return str(obj["Body"].read().decode())
        except ClientError as exc:
            if _missing(exc):
                return None
            raise explain(exc, self._where(key)) from None
        except Exception as exc:
            raise explain(exc, self._where(key)) from None

    def _put_text(self, key: str, text: str) -> None:
        self._check_bucket()
        try:
            self._s3.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=text.encode(),
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
            )
        except Exception as exc:
            raise explain(exc, self._where(key)) from None

    def _list_manifest_keys(self) -> Iterable[str]:
        keys = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + MANIFESTS
            )
            for page in pages:
                keys += [o["Key"].removeprefix(self.prefix) for o in page.get("Contents", [])]
        except Exception as exc:
            raise explain(exc, self._where(MANIFESTS)) from None
        return keys
