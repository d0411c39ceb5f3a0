"""The batch job's files: an exclusive lock on the output, and parts checked before use.

A job holds ``OUT.lock`` (an advisory ``flock``) from its start to its end, so a second job
on the same ``--out`` is refused with the first one's pid, host, start time and command line.
The kernel drops the lock when its process dies, however it dies, so a lock file left by a
killed job is recognised as stale and taken over. (Advisory locks are reliable on local file
systems; over NFS they depend on the server's lock manager.)

Each finished part ``part-NNNNN.parquet`` has a record ``part-NNNNN.json`` written after it:
the part's sha256, its size, its row count and first/last customer id and the digest of its
ids, with the chunk's summary statistics. A part is trusted only when that record exists, the
file's sha256 equals the record's and the record's ids are the manifest's chunk; combining
checks the ids of the table actually read against the manifest once more. So a part that was
truncated, swapped for another part or left without its record is scored again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnlens.serving.chunks import BatchError, Chunk

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def write_json(path: Path, data: dict) -> None:
    """Write DATA as JSON to PATH atomically (a temporary name, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _holder(fd: int) -> dict:
    """What a lock file says about the job that wrote it ({} when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", "replace")
    try:
        found = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a job that did not say who it is"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


class OutputLock:
    """The exclusive right to write OUT, its parts and its drift report (a context manager).

    Raises BatchError on entry when another live job holds it; LOG gets a note when a stale
    lock of a job that no longer runs is taken over.
    """

    def __init__(self, out: Path, log=print):
        self.path = lock_path(out)
        self.out = out
        self.log = log
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise BatchError(
                    f"{self.out} is being written by another `churnlens score` job "
                    f"({_describe(holder)}); wait for it to finish or stop it, then rerun "
                    "(with --resume to keep its finished parts)") from None
            # The previous holder unlinks the file on release; if it did so between our open
            # and our lock, we hold a lock on a file nobody else will see: start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.fd = fd
        stale = _holder(self.fd)
        if stale:
            self.log(f"note: {self.path} was left by a job that no longer runs "
                     f"({_describe(stale)}); taking it over")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": pd.Timestamp.now("UTC").strftime("%Y-%m-%d %H:%M:%S UTC"),
              "command": " ".join(sys.argv)}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(me).encode(), 0)
        except BaseException:  # e.g. a full disk: the lock is not kept half-announced
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Unlink while still holding the lock, so no job ever locks a file about to vanish.
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def ids_digest(ids: list[str]) -> str:
    """The digest `plan_chunks` gives the same ids (sha256 of the ids, one per line)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _id_mismatch(chunk: Chunk, rows: int, first, last, digest: str) -> str | None:
    if (rows, first, last, digest) == (chunk.count, chunk.first, chunk.last, chunk.digest):
        return None
    return (f"holds {rows:,} rows, ids {first}..{last}, where the manifest's chunk "
            f"{chunk.index} has {chunk.count:,}, ids {chunk.first}..{chunk.last}"
            + ("" if rows != chunk.count or (first, last) != (chunk.first, chunk.last)
               else " (same range and count, other ids)"))


def _table_ids(table: pa.Table) -> list[str]:
    return table.column("customer_id").to_pylist()


def write_part(records: pa.Table, chunk: Chunk, stats: dict, parts: Path) -> None:
    """Write CHUNK's records as its part, then its record (the part is trusted only with it).

    Raises BatchError when the records are not the chunk's customers.
    """
    ids = _table_ids(records)
    wrong = _id_mismatch(chunk, len(ids), ids[0] if ids else None, ids[-1] if ids else None,
                         ids_digest(ids))
    if wrong:
        raise BatchError(f"chunk {chunk.index}'s records {wrong}; the spine and the features "
                         "disagree")
    path = parts / f"{chunk.part}.parquet"
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(records, tmp)
        data = tmp.read_bytes()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(parts / f"{chunk.part}.json", {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": len(ids),
        "first": chunk.first, "last": chunk.last, "ids_sha256": chunk.digest, "stats": stats})


def part_record(chunk: Chunk, parts: Path) -> dict:
    return json.loads((parts / f"{chunk.part}.json").read_text())


def check_part(chunk: Chunk, parts: Path) -> str | None:
    """Why CHUNK's part cannot be trusted, or None when it can (see the module docstring)."""
    path, meta = parts / f"{chunk.part}.parquet", parts / f"{chunk.part}.json"
    if not path.exists():
        return "missing" if not meta.exists() else "its record is there but the part is not"
    if not meta.exists():
        return "it has no record (written by an interrupted job or copied in)"
    try:
        record = part_record(chunk, parts)
        wanted = (record["sha256"], record["rows"], record["first"], record["last"],
                  record["ids_sha256"], record["stats"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return f"its record {meta.name} is unreadable"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != wanted[0]:
        return (f"its content differs from its record ({len(data):,} bytes, "
                f"{record.get('bytes', 0):,} written): truncated or replaced")
    return _id_mismatch(chunk, *wanted[1:5])


def read_part(chunk: Chunk, parts: Path) -> pa.Table:
    """CHUNK's part, its ids checked against the manifest; BatchError when they differ."""
    path = parts / f"{chunk.part}.parquet"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != part_record(chunk, parts)["sha256"]:
        raise BatchError(f"{path} changed while the job ran (another process writes to "
                         f"{parts}?); rerun with --resume to score it again")
    table = pq.read_table(pa.BufferReader(data))
    ids = _table_ids(table)
    wrong = _id_mismatch(chunk, len(ids), ids[0] if ids else None, ids[-1] if ids else None,
                         ids_digest(ids))
    if wrong:
        raise BatchError(f"{path} {wrong}; rerun with --resume to score it again")
    return table


def is_no_space(exc: OSError) -> bool:
    """True when EXC says the disk (or a quota, or a file size limit) is full."""
    return exc.errno in NO_SPACE or any(
        os.strerror(code) in str(exc) for code in NO_SPACE)
