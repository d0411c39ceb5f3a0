"""The batch work folder's order of steps: a kill at any step leaves a state the next job
reads right (resumes, or starts afresh), never a manifest-less folder or a finished job
taken for an unfinished one. Fast: no model, a hand-built folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnlens.serving import workdir
from churnlens.serving.chunks import BatchError
from churnlens.serving.parts import OutputLock, lock_path
from churnlens.serving.workdir import (
    META_KEY,
    clear_leftovers,
    drift_path,
    manifest_digest,
    open_parts,
    parts_dir,
    publish,
    temporary,
)

MANIFEST = {"format": workdir.MANIFEST_FORMAT, "as_of": "2026-10-31", "chunks": [
    {"index": 0, "first": "a", "last": "b", "count": 2, "digest": "d"}]}


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `finally` clean-up of ours."""


def finished_job(out: Path) -> Path:
    """A job's folder with its part, OUT.tmp and drift temporary: ready to publish."""
    parts = open_parts(out, MANIFEST, resume=False, log=lambda *_: None)
    (parts / "part-00000.parquet").write_bytes(b"part")
    (parts / "part-00000.json").write_text("{}")
    meta = {META_KEY: json.dumps({"job": manifest_digest(MANIFEST)}).encode()}
    pq.write_table(pa.table({"customer_id": ["a", "b"]}).replace_schema_metadata(meta),
                   temporary(out))
    temporary(drift_path(out)).write_text("{}")
    return parts


def kill_at(monkeypatch, step: int) -> None:
    """Kill the process at the STEP-th file-system move (rename, replace, rmtree)."""
    calls = []

    def counting(real):
        def move(*args, **kwargs):
            calls.append(real)
            if len(calls) == step:
                if real is shutil.rmtree:  # rmtree half done: the manifest went first
                    (Path(args[0]) / "manifest.json").unlink()
                raise Killed
            return real(*args, **kwargs)
        return move

    monkeypatch.setattr(Path, "rename", counting(Path.rename))
    monkeypatch.setattr(Path, "replace", counting(Path.replace))
    monkeypatch.setattr(workdir.shutil, "rmtree", counting(shutil.rmtree))


# publish's moves: drift report, OUT, work folder set aside, work folder deleted.
@pytest.mark.parametrize(("step", "finished"), [(1, False), (2, False), (3, True), (4, True)])
def test_a_kill_while_publishing_is_read_right_by_the_next_job(tmp_path, monkeypatch, step,
                                                              finished):
    out = tmp_path / "scores.parquet"
    parts = finished_job(out)
    with monkeypatch.context() as mp:
        kill_at(mp, step)
        with pytest.raises(Killed):
            publish(out, parts)
    notes = []
    clear_leftovers(out, notes.append)
    assert not temporary(out).exists() and not temporary(drift_path(out)).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if ".parts." in p.name) == []
    if finished:  # OUT is in place: nothing is left to resume, a new job starts afresh
        assert out.exists() and not parts.exists()
        assert open_parts(out, {**MANIFEST, "as_of": "2026-09-30"}, resume=False,
                          log=notes.append) == parts
    else:  # OUT is not: the parts are resumable, and only with --resume
        assert not out.exists() and (parts / "manifest.json").exists()
        with pytest.raises(BatchError, match="holds an unfinished job: pass --resume"):
            open_parts(out, MANIFEST, resume=False, log=notes.append)


def test_the_work_folder_of_a_published_job_is_a_leftover_when_the_kill_came_after_out(
        tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    parts = finished_job(out)
    with monkeypatch.context() as mp:
        kill_at(mp, 3)  # OUT in place, the work folder not yet set aside
        with pytest.raises(Killed):
            publish(out, parts)
    assert parts.exists() and out.exists()
    notes = []
    clear_leftovers(out, notes.append)
    assert notes == [f"note: {parts} is left over from the job that wrote {out}; deleting it"]


def test_a_kill_while_creating_the_work_folder_leaves_nothing_to_misread(tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "scores.parquet"
    with monkeypatch.context() as mp:
        kill_at(mp, 2)  # the manifest written (1), the folder not yet renamed into place
        with pytest.raises(Killed):
            open_parts(out, MANIFEST, resume=False, log=lambda *_: None)
    assert not parts_dir(out).exists()
    assert [p.name for p in tmp_path.iterdir()][0].endswith("-new")
    clear_leftovers(out, print)
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_of_another_format_or_shape_is_refused(tmp_path):
    out = tmp_path / "scores.parquet"
    parts_dir(out).mkdir()
    for text, message in [("[]", r"not a churnlens batch manifest \(it holds list: \[\]\)"),
                          ("{", "is not readable JSON"),
                          ('{"format": 1, "chunks": []}', "manifest format 1, this one "
                                                          "writes 2")]:
        (parts_dir(out) / "manifest.json").write_text(text)
        with pytest.raises(BatchError, match=message):
            open_parts(out, MANIFEST, resume=True, log=print)


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    out = tmp_path / "scores.parquet"
    with OutputLock(out, print):
        holder = json.loads(lock_path(out).read_text())
        with pytest.raises(BatchError, match=rf"being written by another `churnlens score` "
                                             rf"job \(pid {holder['pid']} on "):
            # A second open file description: flock refuses it even in the same process.
            OutputLock(out, print).__enter__()
    assert not lock_path(out).exists()
