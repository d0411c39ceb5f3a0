"""Folders and small files of the Spark job, at any path Hadoop can reach.

The job's output, its staging and its small JSON files may live on a local disk, HDFS or an
object store (``hdfs://``, ``s3a://``): the driver reaches them through the JVM's Hadoop
`FileSystem` of the Spark session, the same one the executors write with. A path without a
scheme is Hadoop's default file system (the local disk in local mode).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePosixPath

from churnlens.serving.chunks import BatchError


def join(base: str, *names: str) -> str:
    """BASE/NAME/...: path strings, since a URI (s3a://b/k) is not a local Path."""
    return "/".join([base.rstrip("/"), *names])


def sibling(path: str, suffix: str) -> str:
    """PATH with SUFFIX appended to its last name (OUT -> OUT.tmp)."""
    return path.rstrip("/") + suffix


def drift_path(out: str) -> str:
    """The drift report beside OUT: scores.parquet -> scores.drift.json (as the local job)."""
    head, _, name = out.rstrip("/").rpartition("/")
    stem = str(PurePosixPath(name).with_suffix(".drift.json"))
    return f"{head}/{stem}" if head else stem


def is_local(path: str) -> bool:
    """Whether PATH is a local path (no scheme, or file:)."""
    return "://" not in path or path.startswith("file:")


class Files:
    """The Hadoop file system of SPARK's session, for the driver's few file operations."""

    def __init__(self, spark):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _at(self, path: str):
        p = self._jvm.org.apache.hadoop.fs.Path(path)
        fs = p.getFileSystem(self._conf)
        fs.setWriteChecksum(False)  # no .NAME.crc beside each small file on a local disk
        return p, fs

    def exists(self, path: str) -> bool:
        p, fs = self._at(path)
        return bool(fs.exists(p))

    def names(self, path: str) -> list[str]:
        """The names in folder PATH, sorted ([] when it does not exist)."""
        p, fs = self._at(path)
        if not fs.exists(p):
            return []
        return sorted(str(s.getPath().getName()) for s in fs.listStatus(p))

    def digest(self, path: str) -> str:
        """A hash of what the file or folder PATH holds by its listing: each file's path
        under PATH, length and modification time (a rewritten file has another time)."""
        p, fs = self._at(path)
        found = fs.listFiles(p, True)
        base = str(fs.getFileStatus(p).getPath().toUri().getPath()).rstrip("/")
        entries = []
        while found.hasNext():
            s = found.next()
            name = str(s.getPath().toUri().getPath()).removeprefix(base)
            entries.append(f"{name}\t{s.getLen()}\t{s.getModificationTime()}")
        return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]

    def mkdirs(self, path: str) -> None:
        p, fs = self._at(path)
        fs.mkdirs(p)

    def delete(self, path: str) -> None:
        """Delete PATH and everything under it (nothing when it does not exist)."""
        p, fs = self._at(path)
        if fs.exists(p):
            fs.delete(p, True)

    def rename(self, src: str, dst: str) -> None:
        """Move SRC to DST (atomic on a local disk and HDFS); BatchError when it fails."""
        s, fs = self._at(src)
        d, _ = self._at(dst)
        if fs.exists(d) or not fs.rename(s, d):
            raise BatchError(f"could not rename {src} to {dst} (does {dst} exist, or is it "
                             "on another file system?); delete it or pick another --out")

    def replace(self, src: str, out: str) -> None:
        """Put the finished folder SRC at OUT: an existing OUT is moved aside first and
        deleted only once SRC is in place, so OUT is never missing a whole dataset."""
        if self.exists(out):
            aside = sibling(out, f".{os.getpid()}-old")
            self.rename(out, aside)
            self.rename(src, out)
            self.delete(aside)
        else:
            self.rename(src, out)

    def touch(self, path: str) -> None:
        """An empty file at PATH (as Spark's ``_SUCCESS``)."""
        p, fs = self._at(path)
        fs.create(p, True).close()

    def write_json(self, path: str, data: dict) -> None:
        """DATA as JSON at PATH, written under a temporary name and renamed."""
        tmp = sibling(path, f".{os.getpid()}.tmp")
        p, fs = self._at(tmp)
        stream = fs.create(p, True)
        try:
            stream.write(json.dumps(data, indent=1).encode())
        finally:
            stream.close()
        self.delete(path)
        self.rename(tmp, path)

    def read_json(self, path: str) -> dict:
        """The JSON at PATH; BatchError when it is not readable JSON."""
        p, fs = self._at(path)
        stream = fs.open(p)
        try:
            text = str(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BatchError(f"{path} is not readable JSON ({exc}); delete it to start "
                             "afresh") from None
