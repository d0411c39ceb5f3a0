"""The Spark job's output: a parquet dataset folder committed atomically, chunk by chunk.

OUT is built under ``OUT.tmp`` (created complete with its ``_manifest.json`` under
``OUT.tmp.PID-new`` and renamed): each committed chunk is a folder ``chunk-NNNNN`` of part
files written by the executors, with Spark's ``_SUCCESS`` and the chunk's ``_stats.json``
(`churnlens.serving.spark_score`). When every chunk is committed the final ``_manifest.json``
(the job's digest and merged statistics) and ``_SUCCESS`` are written, the drift report is
put beside, and ``OUT.tmp`` is renamed to OUT (an existing OUT, with ``--overwrite``, is first
renamed to ``OUT.PID-old`` and deleted after). Readers skip names starting with ``_`` or
``.``, so pyarrow and Spark read OUT as the records only, and never see a half-written one.

An existing OUT needs ``--overwrite`` (or ``--resume``, which finds it finished); an existing
``OUT.tmp`` needs ``--resume`` (the committed chunks are kept, after the manifest is checked
against this job's, `churnlens.serving.workdir.check_manifest`) or ``--overwrite``.
"""

from __future__ import annotations

import os

from churnlens.serving.chunks import BatchError, Chunk
from churnlens.serving.spark_files import Files, join, sibling
from churnlens.serving.workdir import check_manifest, manifest_digest

MANIFEST = "_manifest.json"


def work_dir(out: str) -> str:
    return sibling(out, ".tmp")


def clear_leftovers(files: Files, out: str) -> None:
    """Delete what only a killed job leaves beside OUT: a half-created OUT.tmp, an OUT set
    aside by an interrupted publish, the chunk folders being written. Needs the lock."""
    head, _, name = out.rstrip("/").rpartition("/")
    for found in files.names(head or "."):
        if found.startswith(f"{name}.tmp.") and found.endswith("-new") or (
                found.startswith(f"{name}.") and found.endswith("-old")):
            files.delete(join(head, found) if head else found)
    files.delete(join(work_dir(out), "_writing"))


def _committed(files: Files, work: str, chunks: list[Chunk], log) -> dict[int, dict]:
    """The stats of each chunk committed in WORK whose record is the manifest's chunk."""
    done = {}
    names = set(files.names(work))
    for c in chunks:
        folder = f"chunk-{c.index:05d}"
        if folder not in names:
            continue
        inside = set(files.names(join(work, folder)))
        if not {"_SUCCESS", "_stats.json"} <= inside:
            log(f"note: {folder} is scored again: it lacks {'_SUCCESS' if '_SUCCESS' not in inside else '_stats.json'}")
        else:
            record = files.read_json(join(work, folder, "_stats.json"))
            if record.get("chunk") == c.__dict__:
                done[c.index] = record["stats"]
                continue
            log(f"note: {folder} is scored again: its record is not the manifest's chunk")
        files.delete(join(work, folder))
    return done


def check_options(files: Files, out: str, *, resume: bool, overwrite: bool) -> None:
    """What `open_output` refuses whatever the job's manifest, checked before the source is
    read: an existing OUT or OUT.tmp without --resume or --overwrite fails in seconds, not
    after the load. Raises BatchError with `open_output`'s messages."""
    if resume and overwrite:
        raise BatchError("--resume and --overwrite exclude each other: --resume finishes an "
                         "interrupted job, --overwrite starts afresh and replaces OUT")
    if resume or overwrite:
        return
    if files.exists(out):
        raise BatchError(f"{out} exists: pass --overwrite to replace it (or another --out); "
                         "--resume finishes an interrupted job")
    work = work_dir(out)
    if files.exists(work):
        found = _read_manifest(files, work)
        done = sum(1 for n in files.names(work) if n.startswith("chunk-"))
        raise BatchError(
            f"{work} holds an unfinished job: pass --resume to finish it ({done} of "
            f"{len(found['chunks'])} chunks committed, as of {found.get('as_of')}), "
            "or --overwrite to start afresh")


def open_output(files: Files, out: str, manifest: dict, *, resume: bool, overwrite: bool,
                log) -> tuple[str, dict[int, dict], dict | None]:
    """Where the job writes its chunks, the committed chunks' stats, and the final manifest
    when OUT is this very job, finished (with RESUME: nothing to do).

    Raises BatchError for an existing OUT or OUT.tmp the options do not allow to use.
    """
    check_options(files, out, resume=resume, overwrite=overwrite)
    work = work_dir(out)
    if files.exists(out) and not overwrite:  # with --resume: this job, finished
        return work, {}, _finished(files, out, manifest)
    if files.exists(work):
        if overwrite:
            log(f"note: {work} (an unfinished job) is deleted: --overwrite starts afresh")
            files.delete(work)
        else:  # with --resume (check_options refused the rest)
            found = _read_manifest(files, work)
            check_manifest(found, manifest, work)
            chunks = [Chunk(**c) for c in manifest["chunks"]]
            return work, _committed(files, work, chunks, log), None
    elif resume:
        log(f"note: nothing to resume at {work}; starting afresh")
    new = sibling(work, f".{os.getpid()}-new")
    files.delete(new)
    files.write_json(join(new, MANIFEST), manifest)
    files.rename(new, work)
    return work, {}, None


def _read_manifest(files: Files, folder: str) -> dict:
    path = join(folder, MANIFEST)
    if not files.exists(path):
        raise BatchError(f"{folder} holds no {MANIFEST}, so which job wrote it cannot be told "
                         f"(copied in, or not a churnlens output); delete {folder} or pass "
                         "--overwrite")
    found = files.read_json(path)
    if not isinstance(found, dict) or "chunks" not in found:
        raise BatchError(f"{path} is not a churnlens batch manifest; delete {folder} or pass "
                         "--overwrite")
    return found


def _finished(files: Files, out: str, manifest: dict) -> dict:
    """OUT's final manifest when OUT is this job, finished (with --resume); else BatchError."""
    found = _read_manifest(files, out)
    if found.get("job") != manifest_digest(manifest):
        check_manifest(found, manifest, out)  # names the differences
        raise BatchError(f"{out} was written by another job (same settings, other "
                         "manifest); pass --overwrite to replace it")
    return found


def publish(files: Files, out: str, work: str, final: dict, drift: dict, drift_at: str) -> None:
    """Write the final manifest, _SUCCESS and the drift report, then rename WORK to OUT."""
    files.delete(join(work, "_writing"))
    files.write_json(join(work, MANIFEST), final)
    files.write_json(join(work, "_SUCCESS"), {})
    files.write_json(drift_at, drift)
    files.replace(work, out)
