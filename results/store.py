"""The results folder: a local path or any URI pyarrow can write (``s3://``, ``gs://``, ...).

The one file store of the project: the sweep writes through it, the analysis reads (and writes
its report) through it, and the synthetic writer uses it too.

Every file another step reads is written atomically, so a crash leaves either the old file or
the new one, never half of one: on a local or network filesystem it is written to a temporary
name beside it and moved into place; on an object store (S3, GCS) an object becomes visible only
when its upload completes, so it is written in place (a "move" there is a copy and a delete).

An S3-compatible store other than AWS (MinIO, Ceph, a test server) is named by pyarrow's usual
environment: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_DEFAULT_REGION`` and the
credentials; or in the URI itself, ``s3://bucket/path?endpoint_override=host:port&scheme=http``.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results.errors import UserError


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


# Filesystems whose objects appear whole when their upload completes (no rename needed).
OBJECT_STORES = ("s3", "gcs")


class Store:
    """Files under one results folder, addressed by paths relative to it ("" is the folder).

    ``create=False`` opens a folder to read without creating it (its ``exists("")`` says
    whether it is there)."""

    def __init__(self, location: str | Path, create: bool = True):
        location = str(location)
        if is_uri(location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise UserError(f"--out {location}: pyarrow cannot open this location ({_short(exc)})") from None
            base, sep, query = location.partition("?")
            self.uri = base.rstrip("/") + sep + query
            self.root = self.root.rstrip("/")
        else:
            path = Path(location.removeprefix("file://")).expanduser().resolve()
            self.fs, self.root = pafs.LocalFileSystem(), str(path)
            self.uri = str(path)
        if not create:
            return
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            hint = ""
            if self.fs.type_name == "s3":
                hint = ("; check that the bucket exists, the credentials (AWS_ACCESS_KEY_ID / an "
                        "instance profile) and, for a store other than AWS, AWS_ENDPOINT_URL")
            raise UserError(f"--out {location}: cannot create the results folder ({exc}){hint}") from None

    def sub(self, relpath: str) -> "Store":
        """The folder ``relpath`` as a store of its own (nothing is created)."""
        store = object.__new__(Store)
        store.fs, store.root, store.uri = self.fs, self.path(relpath), self.uri_of(relpath)
        return store

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath).rstrip("/") if relpath else self.root

    def uri_of(self, relpath: str) -> str:
        base, query = (self.uri.split("?", 1) + [""])[:2]  # keep ?endpoint_override=... last
        where = posixpath.join(base.rstrip("/"), relpath).rstrip("/") if relpath else base
        return where + (f"?{query}" if query else "")

    # --- writing, always atomic ---------------------------------------------------------

    @property
    def is_object_store(self) -> bool:
        return self.fs.type_name in OBJECT_STORES

    def write_bytes(self, relpath: str, data: bytes) -> None:
        final = self.path(relpath)
        if self.is_object_store:  # an object is visible only once whole: write it in place
            with self.fs.open_output_stream(final) as stream:
                stream.write(data)
            return
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        temporary = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self.fs.move(temporary, final)

    def write_json(self, relpath: str, content: Any) -> None:
        self.write_bytes(relpath, json.dumps(content, indent=2, sort_keys=True).encode())

    def write_table(self, relpath: str, table: pa.Table, row_group_size: int | None = None) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=row_group_size)
        self.write_bytes(relpath, sink.getvalue())

    def write_rows(self, relpath: str, rows: list[dict[str, Any]]) -> None:
        self.write_table(relpath, pa.Table.from_pylist(rows))

    def upload_file(self, local_path: str | Path, relpath: str) -> None:
        self.write_bytes(relpath, Path(local_path).read_bytes())

    def delete(self, relpath: str) -> None:
        try:
            self.fs.delete_file(self.path(relpath))
        except FileNotFoundError:
            pass

    def delete_dir(self, relpath: str) -> None:
        """A folder and everything below it (nothing if it does not exist)."""
        if self.exists(relpath):
            self.fs.delete_dir(self.path(relpath))

    # --- reading -------------------------------------------------------------------------

    def _type(self, relpath: str) -> pafs.FileType:
        try:
            return self.fs.get_file_info(self.path(relpath)).type
        except OSError as exc:
            raise UserError(f"cannot reach {self.uri_of(relpath)} ({_short(exc)}): check the location "
                            "and the store's credentials / endpoint (AWS_ENDPOINT_URL)") from None

    def exists(self, relpath: str = "") -> bool:
        return self._type(relpath) != pafs.FileType.NotFound

    def is_dir(self, relpath: str = "") -> bool:
        return self._type(relpath) == pafs.FileType.Directory

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open_input_stream(self.path(relpath)) as stream:
            return stream.read()

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read_bytes(relpath))

    def download(self, relpath: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        local_path.write_bytes(self.read_bytes(relpath))
        return local_path

    def list_files(self, relpath: str, suffix: str = "") -> list[str]:
        """Relative paths of the finished files below ``relpath`` (temporaries left out)."""
        selector = pafs.FileSelector(self.path(relpath), recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and ".tmp-" not in info.base_name:
                if info.base_name.endswith(suffix):
                    found.append(posixpath.relpath(info.path, self.root))
        return sorted(found)

    def read_table(self, relpath: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file; raises ``pa.ArrowInvalid`` (or OSError) if it is corrupt."""
        with self.fs.open_input_file(self.path(relpath)) as handle:
            return pq.read_table(handle, columns=columns)

    def local_dir(self) -> str | None:
        return self.root if self.is_local else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def local_tmp_dir() -> str:
    """Scratch space on this node for files in transit to or from the store."""
    base = os.environ.get("SEATBELT_TMP") or os.environ.get("TMPDIR") or "/tmp"
    path = Path(base) / "seatbelt-sweep"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
