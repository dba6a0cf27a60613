"""One sweep per results folder: ``sweep.lock`` names the sweep that holds it, taken atomically.

Two sweeps on one ``--out`` would both train every trial, leave the checkpoints and rows of
whichever finished last (training on several threads is not bitwise reproducible, so attack rows
could then describe another model than the checkpoint beside them) and give MLflow two parent
runs. So the driver holds the folder for as long as it runs, and a second one exits 2 naming it.

How the lock is taken, by where the folder is:

| folder | taken with | a holder that died |
|---|---|---|
| local or network path | ``flock`` on the file, held while the driver runs | the OS drops the flock with its process, however it ended: a lock file whose flock is free is taken over |
| ``s3://`` | ``PutObject`` with ``If-None-Match: *`` (boto3: pyarrow's filesystem has no conditional write) | the holder renews the lock every ``RENEW_SECONDS``; one not renewed for ``STALE_SECONDS``, or one from this host whose pid is gone, is replaced with ``If-Match`` on its ETag, so of two sweeps taking it over one wins |
| other (``gs://``, ...) | read, then write: not atomic, said as a warning | as for ``s3://``, without the ETag check |
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator
from urllib.parse import parse_qs

from results import layout
from results.errors import UserError
from results.store import Store

LOCK_FILE = layout.LOCK
RENEW_SECONDS = 60.0
STALE_SECONDS = 300.0


def new_record() -> dict[str, Any]:
    """What the lock says about its holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500], "token": uuid.uuid4().hex}


def describe(record: dict[str, Any]) -> str:
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started "
            f"{record.get('started', '?')}")


def held_error(store: Store, record: dict[str, Any] | None) -> UserError:
    holder = describe(record) if record else "another sweep (its lock is being written)"
    command = f" ({record['command']})" if record and record.get("command") else ""
    return UserError(
        f"--out {store.uri} is in use by {holder}{command}; wait for that sweep to end or use "
        f"another --out. If that process is gone for good (its machine was lost), delete "
        f"{store.uri_of(LOCK_FILE)} and re-run")


@contextlib.contextmanager
def hold(store: Store) -> Iterator[dict[str, Any]]:
    """Hold ``store``'s results folder while the block runs; raise UserError if another sweep
    holds it. Yields this sweep's lock record."""
    if store.is_local:
        lock: Any = LocalLock(store)
    elif store.fs.type_name == "s3":
        lock = S3Lock(store)
    else:
        lock = UnconditionalLock(store)
    record = lock.acquire()
    try:
        yield record
    finally:
        lock.release()


def _taken_over(store: Store, previous: dict[str, Any], why: str) -> None:
    print(f"results folder: took over {store.uri_of(LOCK_FILE)} from {describe(previous)}, {why}",
          flush=True)


# --- a local or network folder: flock -----------------------------------------------------------


class LocalLock:
    def __init__(self, store: Store):
        self.store = store
        self.path = os.path.join(store.root, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise held_error(self.store, self._read_holder()) from None
            except OSError as exc:  # e.g. ENOLCK: a network filesystem mounted without locking
                os.close(fd)
                raise UserError(f"--out {self.store.uri}: cannot lock {self.path} ({exc}); use a "
                                "results folder on a filesystem with file locks") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            # The holder removed the file between our open and flock: we locked a file no
            # one else can see. Start over on the one at the path.
            os.close(fd)
        previous = _parse(os.pread(fd, 1 << 16, 0))
        if previous:  # a file whose flock was free: its process is gone
            _taken_over(self.store, previous, "which is no longer running")
        record = new_record()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record, indent=2).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return record

    def _read_holder(self) -> dict[str, Any] | None:
        for _ in range(20):  # the holder writes its record just after taking the flock
            try:
                with open(self.path, "rb") as handle:
                    record = _parse(handle.read())
            except FileNotFoundError:
                record = None
            if record:
                return record
            time.sleep(0.05)
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked, so no one locks the file being removed
        os.close(self.fd)
        self.fd = None


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# --- object stores: a lock record renewed while the sweep runs --------------------------------


class RenewedLock:
    """A lock record that its holder renews, so a holder that died without removing it is seen
    as one that stopped renewing. Subclasses say how to read, create and replace the record."""

    def __init__(self, store: Store):
        self.store = store
        self.record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> dict[str, Any]:
        record = new_record()
        if not self.create(record):
            found = self.read()
            if found is None:  # removed between our create and read: one more try
                if not self.create(record):
                    raise held_error(self.store, None)
            else:
                previous, age = found
                why = self.stale(previous, age)
                if why is None:
                    raise held_error(self.store, previous)
                if not self.replace(record):  # another sweep took it over first
                    found = self.read()
                    raise held_error(self.store, found[0] if found else None)
                _taken_over(self.store, previous, why)
        self.record = record
        self._renewer = threading.Thread(target=self._renew, name="results-folder-lock", daemon=True)
        self._renewer.start()
        return record

    @staticmethod
    def stale(previous: dict[str, Any], age: float) -> str | None:
        """Why ``previous`` (last written ``age`` seconds ago) no longer holds the folder."""
        if previous.get("host") == socket.gethostname() and not _pid_running(previous.get("pid")):
            return "which is no longer running"
        if age > STALE_SECONDS:
            return f"which has not renewed it for {age:.0f} s"
        return None

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            assert self.record is not None
            self.record["renewed"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            try:
                ok = self.replace(self.record, own=True)
            except Exception as exc:  # the store is unreachable for a moment: try again later
                print(f"warning: could not renew {self.store.uri_of(LOCK_FILE)} ({exc})",
                      file=sys.stderr, flush=True)
                continue
            if not ok:
                print(f"warning: {self.store.uri_of(LOCK_FILE)} was taken over by another sweep; "
                      "this one's results may mix with it", file=sys.stderr, flush=True)
                return

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        if self.record is not None:
            with contextlib.suppress(Exception):  # a lock left behind is renewed by no one
                self.remove()
            self.record = None

    # what a store provides
    def create(self, record: dict[str, Any]) -> bool: ...
    def read(self) -> tuple[dict[str, Any], float] | None: ...
    def replace(self, record: dict[str, Any], own: bool = False) -> bool: ...
    def remove(self) -> None: ...


class S3Lock(RenewedLock):
    """Conditional writes: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace and
    remove, so each step succeeds only on the lock it looked at."""

    def __init__(self, store: Store):
        super().__init__(store)
        try:
            import boto3
        except ImportError:
            raise UserError("the results-folder lock on s3:// needs boto3: pip install boto3") from None
        self.bucket, _, prefix = store.root.partition("/")
        self.key = f"{prefix}/{LOCK_FILE}" if prefix else LOCK_FILE
        self.client = boto3.client("s3", **_boto3_options(store.uri))
        self.etag: str | None = None      # of the record we last wrote
        self.seen_etag: str | None = None  # of the record we last read

    def create(self, record):
        return self._put(record, IfNoneMatch="*")

    def read(self):
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        self.seen_etag = answer["ETag"]
        record = _parse(answer["Body"].read()) or {}
        # both times by the store's clock, so this host's clock does not matter
        now = _http_date(answer["ResponseMetadata"]["HTTPHeaders"].get("date")) or time.time()
        return record, now - answer["LastModified"].timestamp()

    def replace(self, record, own=False):
        return self._put(record, IfMatch=self.etag if own else self.seen_etag)

    def remove(self):
        self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)

    def _put(self, record: dict[str, Any], **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.key,
                                            Body=json.dumps(record, indent=2).encode(), **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise UserError(f"--out {self.store.uri}: cannot write {self.store.uri_of(LOCK_FILE)} "
                            f"({code}: {exc}); check the bucket's permissions") from None
        self.etag = answer["ETag"]
        return True


class UnconditionalLock(RenewedLock):
    """For stores without conditional writes here (gs://, ...): check, then write. Two sweeps
    started within the same second can both pass the check; said once as a warning."""

    def acquire(self):
        print(f"warning: {self.store.fs.type_name} has no conditional write here, so the lock on "
              f"{self.store.uri} is checked, then written: two sweeps started at the same moment "
              "could both pass", file=sys.stderr, flush=True)
        return super().acquire()

    def create(self, record):
        if self.store.exists(LOCK_FILE):
            return False
        self.store.write_json(LOCK_FILE, record)
        return True

    def read(self):
        try:
            info = self.store.fs.get_file_info(self.store.path(LOCK_FILE))
            record = self.store.read_json(LOCK_FILE)
        except (FileNotFoundError, ValueError):
            return None
        mtime = info.mtime.timestamp() if info.mtime else time.time()
        return record, time.time() - mtime

    def replace(self, record, own=False):
        self.store.write_json(LOCK_FILE, record)
        return True

    def remove(self):
        self.store.delete(LOCK_FILE)


def _boto3_options(uri: str) -> dict[str, str]:
    """boto3's endpoint and region from the ``?endpoint_override=host:port&scheme=http&region=``
    of a pyarrow S3 URI; without them boto3 reads AWS_ENDPOINT_URL(_S3) and the region itself."""
    query = {k: v[-1] for k, v in parse_qs(uri.partition("?")[2]).items()}
    options = {}
    if "endpoint_override" in query:
        endpoint = query["endpoint_override"]
        if "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        options["endpoint_url"] = endpoint
    if "region" in query:
        options["region_name"] = query["region"]
    return options


def _http_date(value: str | None) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def _pid_running(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True
