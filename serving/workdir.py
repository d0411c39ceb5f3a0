"""The work folder beside a batch job's output, kept in an order no kill can make misleading.

``OUT.parts/`` is built complete (its manifest inside) under a temporary name,
``OUT.parts.PID-new``, and renamed into place, so it never exists without its manifest. At the
end the parts are combined into ``OUT.tmp``, whose parquet metadata carries the manifest's
digest; the drift report and then ``OUT`` are renamed into place; ``OUT.parts/`` is renamed
aside (``OUT.parts.PID-old``) and only then deleted. A later job, holding the output's lock
(`churnlens.serving.parts.OutputLock`), deletes every temporary and every folder set aside,
and recognises an ``OUT.parts/`` whose job already finished (``OUT`` carries its digest) as a
leftover. So after a kill at any step a later job either resumes the parts or starts afresh,
and never mixes parts of two jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from churnlens.serving.chunks import BatchError
from churnlens.serving.parts import write_json

MANIFEST_FORMAT = 2
META_KEY = b"churnlens"


def parts_dir(out: Path) -> Path:
    """The work folder beside OUT holding the parts and the manifest."""
    return out.with_name(out.name + ".parts")


def drift_path(out: Path) -> Path:
    return out.with_suffix(".drift.json")


def temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def manifest_digest(manifest: dict) -> str:
    """What identifies a job: the sha256 of its manifest (written into OUT's metadata)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def read_manifest(parts: Path) -> dict:
    """The manifest in PARTS; BatchError when it is unreadable or not a churnlens manifest."""
    path = parts / "manifest.json"
    fix = f"delete {parts} to start afresh"
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path} is not readable JSON ({exc}); {fix}") from None
    if not isinstance(found, dict) or "chunks" not in found:
        held = type(found).__name__ if not isinstance(found, dict) else "no chunks"
        raise BatchError(f"{path} is not a churnlens batch manifest (it holds {held}: "
                         f"{json.dumps(found)[:60]}); {fix}")
    if found.get("format") != MANIFEST_FORMAT:
        raise BatchError(f"{path} was written by another churnlens version (manifest format "
                         f"{found.get('format')!r}, this one writes {MANIFEST_FORMAT}); {fix}")
    return found


def check_manifest(found: dict, wanted: dict, parts: Path) -> None:
    """Raise BatchError naming every difference between a resumed job and the one on disk."""
    keys = [("as_of", "as-of date"), ("source", "data source"),
            ("observed_until", "end of data"), ("chunk_size", "chunk size")]
    diffs = [f"{label}: {found.get(k)!r} on disk, {wanted[k]!r} now"
             for k, label in keys if found.get(k) != wanted[k]]
    for k in ("name", "version", "run_id"):
        if found.get("model", {}).get(k) != wanted["model"][k]:
            diffs.append(f"model {k}: {found.get('model', {}).get(k)!r} on disk, "
                         f"{wanted['model'][k]!r} now")
    data = found.get("data") or {}
    changed = sorted(t for t in wanted["data"] if data.get(t) != wanted["data"][t])
    if changed:
        diffs.append("the data changed since the first run (rows:fingerprint of " + ", ".join(
            f"{t} {data.get(t)} on disk, {wanted['data'][t]} now" for t in changed) + ")")
    if not diffs and found.get("chunks") != wanted["chunks"]:
        diffs.append("the active customers differ (the data changed since the first run)")
    if diffs:
        raise BatchError(
            f"cannot resume: {parts} belongs to a different job ({'; '.join(diffs)}); "
            f"rerun with the same settings and data, or delete {parts} to start afresh")


def finished_job(out: Path) -> str | None:
    """The manifest digest OUT carries (the job that wrote it), None when OUT has none."""
    try:
        meta = pq.read_schema(out).metadata or {}
        return json.loads(meta[META_KEY]).get("job")
    except (OSError, KeyError, ValueError, AttributeError):
        return None


def _remove_tree(folder: Path) -> None:
    """Rename FOLDER aside, then delete it: a kill mid-way leaves only a folder set aside."""
    aside = folder.with_name(f"{folder.name}.{os.getpid()}-old")
    folder.rename(aside)
    shutil.rmtree(aside)


def clear_leftovers(out: Path, log) -> None:
    """Delete what only a dead job can have left beside OUT: temporaries, folders set aside,
    an empty work folder, and the work folder of a job that finished. Needs the lock."""
    parts = parts_dir(out)
    for path in [temporary(out), temporary(drift_path(out)),
                 *(sorted(parts.glob("*.tmp")) if parts.is_dir() else [])]:
        path.unlink(missing_ok=True)
    for folder in sorted(out.parent.glob(f"{parts.name}.*-new")) + sorted(
            out.parent.glob(f"{parts.name}.*-old")):
        shutil.rmtree(folder)
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    if (parts / "manifest.json").is_file() and out.exists():
        try:
            digest = manifest_digest(read_manifest(parts))
        except BatchError:
            return
        if finished_job(out) == digest:
            log(f"note: {parts} is left over from the job that wrote {out}; deleting it")
            _remove_tree(parts)


def open_parts(out: Path, manifest: dict, resume: bool, log) -> Path:
    """The work folder of MANIFEST's job: the unfinished one resumed, or a new one.

    Raises BatchError when a folder is there but cannot be used: no manifest, a manifest of
    another job, or an unfinished job without RESUME.
    """
    parts = parts_dir(out)
    if parts.exists():
        if not (parts / "manifest.json").is_file():
            files = sum(1 for _ in parts.iterdir()) if parts.is_dir() else 0
            raise BatchError(
                f"{parts} holds {files} file(s) but no manifest.json, so which job wrote them "
                "cannot be told (copied in, or left by an older churnlens); nothing was "
                f"scored: delete {parts} to start afresh")
        found = read_manifest(parts)
        if not resume:
            done = sum(1 for c in found["chunks"]
                       if (parts / f"part-{c['index']:05d}.json").exists())
            raise BatchError(
                f"{parts} holds an unfinished job: pass --resume to finish it ({done} of "
                f"{len(found['chunks'])} parts done, as of {found.get('as_of')}), or delete "
                f"{parts} to start afresh")
        check_manifest(found, manifest, parts)
        return parts
    if resume:
        log(f"note: nothing to resume at {parts}; starting afresh")
    new = parts.with_name(f"{parts.name}.{os.getpid()}-new")
    new.mkdir()
    write_json(new / "manifest.json", manifest)
    new.rename(parts)
    return parts


def publish(out: Path, parts: Path) -> None:
    """Put the combined OUT.tmp and the drift report in place, then delete the work folder."""
    temporary(drift_path(out)).replace(drift_path(out))
    temporary(out).replace(out)
    _remove_tree(parts)
