"""The S3 transport: a bare mvc repository under s3://bucket/prefix, through boto3.

Imported only when an s3:// remote is used. Region and credentials come from the standard AWS
configuration (environment, ~/.aws, instance roles); the endpoint from `remote.<name>.endpoint`
or AWS_ENDPOINT_URL (MinIO, Ceph, a local S3 server). Credentials are never written anywhere.

Objects are written with one PutObject each (multipart above MULTIPART_BYTES), which S3 makes
visible atomically. Refs, HEAD and certificate indexes move by compare-and-swap with S3
conditional writes: `If-None-Match: *` to create, `If-Match: <etag>` to replace or delete. The
first push to a new prefix checks that the server refuses a conditional write it must refuse, so a
server that ignores the headers is reported instead of silently losing updates. Limitation: on
servers that do not support `If-Match` on DeleteObject, `push --delete` re-reads the ref and then
deletes it unconditionally (a narrow window in which a concurrent push to that branch is lost).
An object put again overwrites its key, which is how `push --repair` replaces a damaged copy.

Failures: botocore retries each request (MAX_ATTEMPTS, throttling such as 503 SlowDown included).
It does not retry a response body that breaks off (a reset connection, a truncated body): `get_into`
asks again for the rest (a Range read pinned to the first response's ETag) up to BODY_RETRIES
times, and `read_file` reads the file again. What still fails is an MvcError that says so, never
a raw botocore exception; nothing is stored or moved by a failed read.
"""
from __future__ import annotations

import io
import os
import threading
import time
import warnings
from urllib.parse import urlparse

from . import forks
from .errors import CredentialsRefused, MvcError, ObjectMissing, RefConflict
from .transport import ABSENT, MAX_FILE_BYTES, REPAIR_HINT, Transport, check_size

MULTIPART_BYTES = 64 * 1024 * 1024


class _BufferReader(io.RawIOBase):
    """A seekable file over a buffer, read in place: io.BytesIO copies anything but bytes (a
    decoded packed object, pushed from its memoryview, would be held twice)."""

    def __init__(self, buf):
        self._buf = memoryview(buf).cast("B")
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        n = max(0, min(len(b), len(self._buf) - self._pos))
        b[:n] = self._buf[self._pos: self._pos + n]
        self._pos += n
        return n

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos


def _reader(data):
    return io.BytesIO(data) if isinstance(data, bytes) else io.BufferedReader(_BufferReader(data), 1 << 20)


MAX_ATTEMPTS = 5   # per request, botocore's standard retry mode
READ_TIMEOUT_S = 30  # a server silent this long is asked again (said once; 120 s kept a silent one quiet ~10 min)
BODY_RETRIES = 4   # a response body that breaks off is asked for again this many times
RETRY_HINT = "run the command again to resume"
_LOADER = None  # botocore's data loader, which every session of the process shares (see _session)
_SESSION_LOCK = threading.Lock()


@forks.on_fork
def _new_session() -> None:  # (see mvc.forks: boto3 sessions and clients are not shared across a fork)
    global _LOADER, _SESSION_LOCK
    _LOADER, _SESSION_LOCK = None, threading.Lock()
CONFLICT_RETRIES = 3  # a conditional write answered 409 (another one in flight on the key) is tried again
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Transport(Transport):
    keeps_commit_graph = True  # (a round trip is tens of milliseconds: a fetch's walk must not take one a commit)

    def __init__(self, url: str, endpoint: str | None = None, jobs: int = 8):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise MvcError("s3:// remotes need boto3", "pip install 'mvc[s3]'") from None
        parsed = urlparse(url)
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint = endpoint
        custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(max_pool_connections=max(10, 2 * jobs),
                        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                        connect_timeout=10, read_timeout=READ_TIMEOUT_S,
                        s3={"addressing_style": "path"} if custom else {})
        from botocore.exceptions import BotoCoreError
        try:  # credentials are resolved here: a missing profile or half a key pair fails now
            session = _session(boto3)
            with _SESSION_LOCK:  # creating clients is not thread-safe; using them is
                self.client = session.client("s3", endpoint_url=endpoint,
                                             region_name=session.region_name or "us-east-1", config=config)
        except BotoCoreError as e:
            self._fail(e, "setting up S3 access")
        self._retry_said = False
        self.client.meta.events.register("needs-retry.s3", self._say_retry)

    def _say_retry(self, attempts=None, caught_exception=None, **_kw) -> None:
        """Say (once) that a request failed and is being tried again: a server that accepts
        connections and never answers was minutes of silence."""
        if caught_exception is not None and not self._retry_said and (attempts or 0) < MAX_ATTEMPTS:
            self._retry_said = True
            warnings.warn(f"{self.describe()}: {type(caught_exception).__name__}: "
                          f"{str(caught_exception)[:160]}; trying again (up to {MAX_ATTEMPTS} attempts a request)")

    def describe(self) -> str:
        return self.url + (f" (endpoint {self.endpoint})" if self.endpoint else "")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _object_key(self, oid: str) -> str:
        return self.key(f"objects/{oid[:2]}/{oid[2:]}")

    # -- error mapping ------------------------------------------------------------------------
    def _fail(self, e: Exception, what: str):
        from botocore import exceptions as bx
        if isinstance(e, bx.NoCredentialsError):
            raise MvcError(f"no AWS credentials for {self.url}",
                           "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure ~/.aws/credentials") from None
        if isinstance(e, (bx.PartialCredentialsError, bx.ProfileNotFound)):
            raise MvcError(f"the AWS credentials for {self.url} are incomplete: {e}",
                           "check AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and ~/.aws/credentials") from None
        if isinstance(e, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError)):
            raise MvcError(f"cannot reach S3 for {self.describe()} while {what}: {e}",
                           "check the endpoint (a server other than AWS needs one: --endpoint URL of clone or remote "
                           "add; mvc remote -v shows a remote's) and the network, and run the command again "
                           "to resume") from None
        if isinstance(e, bx.ClientError):
            code = _code(e)
            if code == "NoSuchBucket":
                raise MvcError(f"S3 bucket {self.bucket!r} does not exist",
                               f"create it first, e.g. aws s3 mb s3://{self.bucket}") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise CredentialsRefused(f"access denied while {what} on {self.url}: {code}",
                                         "check the AWS credentials and the bucket policy") from None
            if code in ("ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired"):
                raise CredentialsRefused(f"the AWS credentials were refused while {what} on {self.url}: {code}",
                                         "renew them (a new session token, or aws sso login) and run the "
                                         "command again to resume") from None
            raise MvcError(f"S3 error while {what} on {self.url}: {code}: {e}",
                           RETRY_HINT if _transient(e) else None) from None
        if isinstance(e, bx.ParamValidationError):  # (no request was sent: running it again fails again)
            if "Invalid bucket name" in str(e):
                raise MvcError(f"the S3 url {self.url} names no valid bucket: {self.bucket!r}",
                               "a bucket name is 3-63 lower-case letters, digits, dots and hyphens: fix the "
                               "url") from None
            raise MvcError(f"S3 refused a request while {what} on {self.url}: {e}") from None
        if isinstance(e, bx.BotoCoreError):
            raise MvcError(f"S3 error while {what} on {self.url}: {e}", RETRY_HINT) from None
        raise e

    # -- objects ------------------------------------------------------------------------------
    def has(self, oid):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(oid))
            return True
        except ClientError as e:
            if _code(e) in _MISSING_CODES:
                return False
            self._fail(e, f"checking object {oid[:12]}")
        except BotoCoreError as e:
            self._fail(e, f"checking object {oid[:12]}")

    def get(self, oid, max_size=None):
        buf = io.BytesIO()
        self.get_into(oid, buf, max_size)
        return buf.getvalue()

    def get_into(self, oid, f, max_size=None):
        """Stream the object into `f`. A body that breaks off is resumed where it stopped (a Range
        read, only while the object still has the ETag of the first response), so `f` never needs
        rewinding and nothing is written twice."""
        from botocore.exceptions import BotoCoreError, ClientError
        what = f"reading object {oid[:12]}"
        n, etag, broken = 0, None, 0
        while True:
            r = None
            try:
                extra = {"Range": f"bytes={n}-", "IfMatch": etag} if n else {}
                r = self.client.get_object(Bucket=self.bucket, Key=self._object_key(oid), **extra)
                etag = etag or r.get("ETag")
                check_size(oid, n + r.get("ContentLength", 0), max_size, self.url)
                for chunk in r["Body"].iter_chunks(1 << 20):
                    check_size(oid, n + len(chunk), max_size, self.url)  # a length header may lie
                    f.write(chunk)
                    n += len(chunk)
                return n
            except ClientError as e:
                code = _code(e)
                if code in _MISSING_CODES:
                    raise ObjectMissing(f"object {oid} is missing on remote {self.url}", REPAIR_HINT) from None
                if n and code in ("InvalidRange", "416"):
                    return n  # the body was whole after all; the caller's hash check decides
                if n and code in _CONFLICT_CODES:
                    raise MvcError(f"object {oid[:12]} on {self.url} was replaced while it was read, "
                                   "by a push --repair maybe", RETRY_HINT) from None
                self._fail(e, what)
            except BotoCoreError as e:
                if _body_broke(e) and r is not None and broken < BODY_RETRIES and (etag or not n):
                    broken += 1  # (a request that got no response was retried by botocore already)
                    continue
                self._fail(e, what)

    def put(self, oid, data, replace=False):
        """One PutObject (or a multipart upload), which replaces whatever the key held: a damaged
        copy is overwritten whether or not `replace` is asked."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            if len(data) < MULTIPART_BYTES:
                self.client.put_object(Bucket=self.bucket, Key=self._object_key(oid), Body=bytes(data))
            else:  # multipart: the object appears only when the upload completes
                from boto3.s3.transfer import TransferConfig
                cfg = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                     max_concurrency=4)
                self.client.upload_fileobj(_reader(data), self.bucket, self._object_key(oid), Config=cfg)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, f"writing object {oid[:12]}")

    def put_file(self, oid, path, replace=False):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            if os.path.getsize(path) < MULTIPART_BYTES:
                with open(path, "rb") as f:  # streamed from the file, not copied into memory
                    self.client.put_object(Bucket=self.bucket, Key=self._object_key(oid), Body=f)
            else:
                from boto3.s3.transfer import TransferConfig
                cfg = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                     max_concurrency=4)
                self.client.upload_file(path, self.bucket, self._object_key(oid), Config=cfg)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, f"writing object {oid[:12]}")
        except Exception as e:  # boto3 wraps a multipart upload's failure (S3UploadFailedError)
            from boto3.exceptions import S3UploadFailedError
            if not isinstance(e, S3UploadFailedError):
                raise
            cause = e.__context__
            if isinstance(cause, (ClientError, BotoCoreError)):
                self._fail(cause, f"writing object {oid[:12]}")
            raise MvcError(f"S3 error while writing object {oid[:12]} on {self.url}: {e}", RETRY_HINT) from None

    # -- mutable files ------------------------------------------------------------------------
    def read_file(self, name):
        from botocore.exceptions import BotoCoreError, ClientError
        for attempt in range(BODY_RETRIES + 1):
            r = None
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
                check_size(name, r.get("ContentLength"), MAX_FILE_BYTES, self.url)
                data = r["Body"].read(MAX_FILE_BYTES + 1)
                check_size(name, len(data), MAX_FILE_BYTES, self.url)
                return data, r["ETag"]
            except ClientError as e:
                if _code(e) in _MISSING_CODES:
                    return None, ABSENT
                self._fail(e, f"reading {name}")
            except BotoCoreError as e:
                if _body_broke(e) and r is not None and attempt < BODY_RETRIES:
                    continue  # a small file whose body broke off: read it whole again
                self._fail(e, f"reading {name}")

    def cas_file(self, name, data, token):
        from botocore.exceptions import BotoCoreError, ClientError
        key = self.key(name)
        try:
            if data is not None:
                cond = {"IfNoneMatch": "*"} if token is ABSENT else {"IfMatch": token}
                for attempt in range(CONFLICT_RETRIES + 1):
                    try:  # a 409 is a conditional write in flight on the same key: S3 asks for a retry
                        return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **cond).get("ETag")
                    except ClientError as e:
                        if _code(e) not in ("ConditionalRequestConflict", "409") or attempt == CONFLICT_RETRIES:
                            raise
                        time.sleep(0.2 * (attempt + 1))
            elif token is not ABSENT:
                self._delete(key, token, name)
            elif self.read_file(name)[0] is not None:
                raise RefConflict(f"{name} on remote {self.url} changed meanwhile", "fetch and try again")
        except ClientError as e:
            if _code(e) in _CONFLICT_CODES or _code(e) in _MISSING_CODES:
                raise RefConflict(f"{name} on remote {self.url} changed meanwhile", "fetch and try again") from None
            self._fail(e, f"updating {name}")
        except BotoCoreError as e:
            self._fail(e, f"updating {name}")

    def _delete(self, key, token, name):
        from botocore.exceptions import ClientError
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=token)
        except ClientError as e:
            if _code(e) not in ("NotImplemented", "501"):
                raise
            # the server has no conditional delete: re-check, then delete (documented limitation)
            if self.read_file(name)[1] != token:
                raise RefConflict(f"{name} on remote {self.url} changed meanwhile", "fetch and try again") from None
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def list_files(self, prefix):
        return sorted(self.list_versions(prefix))

    def list_versions(self, prefix, flat=False):
        from botocore.exceptions import BotoCoreError, ClientError
        base = self.key("")
        out = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.key(prefix), **({"Delimiter": "/"} if flat else {})):
                out.update((o["Key"][len(base):], o.get("ETag")) for o in page.get("Contents", [])
                           if not _folder_marker(o))
        except (ClientError, BotoCoreError) as e:
            self._fail(e, f"listing {prefix}")
        return dict(sorted(out.items()))

    def holds_files(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError
        try:  # (past the folder markers a console's "Create folder" leaves: a few at most)
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=100)
        except (ClientError, BotoCoreError) as e:
            self._fail(e, "listing")
        return any(not _folder_marker(o) for o in page.get("Contents", [])) or bool(page.get("IsTruncated"))

    # -- layout -------------------------------------------------------------------------------
    def check_conditional_writes(self) -> None:
        """A second create of the config just made must be refused (If-None-Match honoured), and so
        must a replacement naming an ETag it does not have (If-Match honoured: every branch move
        relies on it; a server ignoring it let two concurrent pushes both succeed, one lost)."""
        from .transport import remote_config_bytes
        for header, token in (("If-None-Match", ABSENT), ("If-Match", '"00000000000000000000000000000000"')):
            try:
                self.cas_file("config", remote_config_bytes(), token)  # (the same bytes, if it lands)
            except RefConflict:
                continue
            raise MvcError(f"the S3 server of {self.describe()} ignores conditional writes: {header}",
                           "refs cannot move safely there: use AWS S3, a recent MinIO, or a directory remote")

    def enclosing_repository(self):
        """A parent prefix holding an mvc remote's config and HEAD, this prefix lying inside its
        layout (checked once, when a remote is created here)."""
        from botocore.exceptions import BotoCoreError, ClientError
        from .transport import LAYOUT_NAMES
        parts = self.prefix.split("/") if self.prefix else []
        for n in range(len(parts) - 1, -1, -1):
            if parts[n] not in LAYOUT_NAMES:  # beside a layout (REMOTE/project), not inside it
                continue
            parent = "/".join(parts[:n])
            try:
                for name in ("config", "HEAD"):
                    self.client.head_object(Bucket=self.bucket, Key=f"{parent}/{name}" if parent else name)
            except ClientError as e:
                if _code(e) in _MISSING_CODES:
                    continue
                self._fail(e, "checking the locations above it")
            except BotoCoreError as e:
                self._fail(e, "checking the locations above it")
            return f"s3://{self.bucket}/{parent}"
        return None


def _session(boto3):
    """A new boto3 session, so that credentials changed since the last one (rotated keys in the
    environment or ~/.aws/credentials) are read again: a long training process pushing after
    every checkpoint kept the first ones. Its data loader, which reads the service model (~0.1 s
    a session), is the process's one."""
    import botocore.session
    global _LOADER
    with _SESSION_LOCK:
        core = botocore.session.Session()
        if _LOADER is None:
            _LOADER = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _LOADER)
        session = boto3.session.Session(botocore_session=core)
        paths = _LOADER.search_paths  # (each boto3 session adds its data folder to the loader's)
        paths[:] = list(dict.fromkeys(paths))
        return session


def _body_broke(e) -> bool:
    """A response body that broke off after the request succeeded (botocore does not retry it)."""
    from botocore import exceptions as bx
    return isinstance(e, (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError,
                          bx.ConnectionClosedError))


def _transient(e) -> bool:
    """A ClientError worth running the command again for (throttling, a server error; not one
    saying the server lacks what was asked, 501 NotImplemented, which a retry meets again)."""
    code = _code(e)
    status = int(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in ("NotImplemented", "501") or status in (501, 505):
        return False
    return code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "503", "500") or status >= 500


def _code(e) -> str:
    err = getattr(e, "response", {}).get("Error", {})
    code = str(err.get("Code", ""))
    if not code:
        code = str(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def _folder_marker(listed: dict) -> bool:
    """Whether a listed key is the empty `name/` object an S3 console's "Create folder" makes: no
    file of a remote's layout (it made an empty prefix look like a non-mvc folder)."""
    return listed["Key"].endswith("/") and not listed.get("Size")
