"""Batch jobs that cannot corrupt each other: the output's lock, parts checked against the
manifest, the work folder's order of steps, a changed data source, and a full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churnlens.cli.app import main
from churnlens.serving import batch, parts
from churnlens.serving.batch import BatchError, parts_dir, run_batch
from churnlens.serving.parts import lock_path
from tests.fixtures_model import AS_OF
from tests.serving.test_batch import ROOT, batch_env

pytestmark = pytest.mark.slow

QUIET = {"log": lambda *_: None, "progress": False}


@pytest.fixture(scope="module")
def env(trained_env):
    with batch_env(trained_env) as e:
        yield e


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> pd.DataFrame:
    """The records of one uninterrupted run (chunks of 400)."""
    out = tmp_path_factory.mktemp("reference") / "scores.parquet"
    run_batch(env.job(out), env.settings, **QUIET)
    return pq.read_table(out).to_pandas()


def crash_after(monkeypatch, n: int) -> list:
    """Make the local engine raise KeyboardInterrupt after N chunks (while computing the
    features of the next one, the Nth being scored then); returns the chunks started."""
    scored = []
    real = batch.LocalEngine.features

    def features(self, chunk):
        if len(scored) >= n:
            raise KeyboardInterrupt("simulated crash")
        scored.append(chunk.index)
        return real(self, chunk)

    monkeypatch.setattr(batch.LocalEngine, "features", features)
    return scored


def unfinished(env, out: Path, monkeypatch, n: int, **kw) -> None:
    """A job on OUT killed after N chunks, with the engine restored afterwards."""
    with monkeypatch.context() as mp:
        crash_after(mp, n)
        with pytest.raises(KeyboardInterrupt, match="simulated crash"):
            run_batch(env.job(out, **kw), env.settings, **QUIET)


def assert_equal_records(out: Path, reference: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), reference)


def cli(env, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "churnlens.cli", "--params", str(ROOT / "params.yaml"),
            "score", "--source", str(env.trained.source), "--as-of", AS_OF, "--out", str(out),
            "--chunk-size", "100", *extra]


def test_a_second_scorer_on_the_same_out_is_refused_naming_the_first(env, reference,
                                                                     tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    unfinished(env, out, monkeypatch, 2, chunk_size=100)
    cli_env = env.trained.env()
    first = subprocess.Popen(cli(env, out, "--resume"), cwd=tmp_path, env=cli_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while f'"pid": {first.pid}' not in (lock_path(out).read_text()
                                            if lock_path(out).exists() else ""):
            assert first.poll() is None, f"first scorer exited {first.returncode} early"
            assert time.monotonic() < deadline, "the first scorer took no lock in 120 s"
            time.sleep(0.05)
        # Stopped while it holds the lock, the first job is certainly running when the
        # second one asks (both resuming, as in the report of two scorers at once).
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(cli(env, out, "--resume"), cwd=tmp_path, env=cli_env,
                                capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "being written by another `churnlens score` job" in lines[0]
    assert f"pid {first.pid} on " in lines[0] and "--resume" in lines[0]
    assert "pass --resume to finish it" not in second.stderr
    assert "2 resumed" in stdout
    assert_equal_records(out, reference)
    assert not lock_path(out).exists() and not parts_dir(out).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(env, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": "here", "command": "x"}))
    lines = []
    run_batch(env.job(out), env.settings, log=lines.append, progress=False)
    assert any(f"left by a job that no longer runs (pid {dead.pid} on here" in line
               for line in lines)
    assert_equal_records(out, reference)
    assert not lock_path(out).exists()


def test_swapped_and_truncated_parts_are_scored_again(env, reference, tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    unfinished(env, out, monkeypatch, 4, chunk_size=200)
    folder = parts_dir(out)
    # part 0: its parquet replaced by part 1's (the record left): the digest differs.
    shutil.copy(folder / "part-00001.parquet", folder / "part-00000.parquet")
    # part 1: parquet and record both replaced by part 3's: the ids are another chunk's.
    for suffix in (".parquet", ".json"):
        shutil.copy(folder / f"part-00003{suffix}", folder / f"part-00001{suffix}")
    # part 2: truncated to half its size.
    data = (folder / "part-00002.parquet").read_bytes()
    (folder / "part-00002.parquet").write_bytes(data[: len(data) // 2])
    lines = []
    with monkeypatch.context() as mp:
        rescored = crash_after(mp, 10_000)
        result = run_batch(env.job(out, chunk_size=200, resume=True), env.settings, log=lines.append,
                           progress=False)
    notes = [line for line in lines if "is scored again" in line]
    assert len(notes) == 3, lines
    assert "part-00000 is scored again: its content differs from its record" in notes[0]
    assert "part-00001 is scored again: holds " in notes[1] and "chunk 1 has" in notes[1]
    assert "part-00002 is scored again: its content differs" in notes[2]
    assert result.chunks_resumed == 1 and rescored[:3] == [0, 1, 2] and 3 not in rescored
    assert_equal_records(out, reference)


def test_a_parts_folder_without_its_manifest_is_refused(env, tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    unfinished(env, out, monkeypatch, 1)
    (parts_dir(out) / "manifest.json").unlink()
    for resume in (False, True):
        with pytest.raises(BatchError, match=r"holds 2 file\(s\) but no manifest.json, so "
                                             r"which job wrote them cannot be told"):
            run_batch(env.job(out, resume=resume), env.settings, **QUIET)
    assert not out.exists() and len(list(parts_dir(out).iterdir())) == 2


def test_a_manifest_holding_a_list_is_one_message_and_exit_2(env, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "scores.parquet"
    parts_dir(out).mkdir()
    (parts_dir(out) / "manifest.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    assert main(cli(env, out, "--resume")[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("churnlens score: error: ")
    assert "manifest.json is not a churnlens batch manifest (it holds list: [])" in err[0]


def test_resume_refuses_when_the_data_changed(env, tmp_path, monkeypatch):
    source = tmp_path / "source"
    shutil.copytree(env.trained.source, source)
    out = tmp_path / "scores.parquet"
    unfinished(env, out, monkeypatch, 1, source=str(source))
    events = pd.read_parquet(source / "events.parquet")
    events.iloc[:-1].to_parquet(source / "events.parquet", index=False)
    with pytest.raises(BatchError, match=r"cannot resume: .*the data changed since the first "
                                         r"run \(rows:fingerprint of events \d+:\w+ on disk, "
                                         r"\d+:\w+ now\)"):
        run_batch(env.job(out, source=str(source), resume=True), env.settings, **QUIET)


def test_as_of_after_the_data_is_refused_with_the_data_range(env, tmp_path):
    # DataError (a ValueError): the CLI's one message and exit 2.
    with pytest.raises(ValueError, match=r"--as-of 2030-01-01 is outside the data, which run "
                                         r"from the first signup on \d{4}-\d\d-\d\d to "
                                         r"\d{4}-\d\d-\d\d: pick a date"):
        run_batch(env.job(tmp_path / "s.parquet", as_of="2030-01-01"), env.settings, **QUIET)
    assert not lock_path(tmp_path / "s.parquet").exists()


def _fill_disk(real, when):
    """A writer that writes a little, then fails as a full disk does, when WHEN(path)."""
    def write(table, where, *args, **kwargs):
        if when(str(where)):
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, *args, **kwargs)
    return write


def _full_output(real):
    """A ParquetWriter that fails as a full disk does on OUT.tmp (not on the parts)."""
    class Full(real):
        def __init__(self, where, *args, **kwargs):
            self.path = str(where)
            super().__init__(where, *args, **kwargs)

        def write_table(self, table, *args, **kwargs):
            if self.path.endswith("scores.parquet.tmp"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write_table(table, *args, **kwargs)
    return Full


@pytest.mark.parametrize("stage", ["part", "combine"])
def test_a_full_disk_is_one_message_and_leaves_no_temporary_file(env, reference, tmp_path,
                                                                  capsys, monkeypatch, stage):
    out = tmp_path / "scores.parquet"
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as mp:
        if stage == "part":
            mp.setattr(parts.pq, "write_table", _fill_disk(pq.write_table,
                                                           lambda p: "part-00002" in p))
        else:
            mp.setattr(batch.pq, "ParquetWriter", _full_output(pq.ParquetWriter))
        assert main(cli(env, out)[3:]) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines()
           if line.strip() and "customers/s" not in line]  # not the progress bar
    assert len(err) == 1 and "no space left on the device" in err[0], err
    assert err[0].startswith("churnlens score: error: ") and "Traceback" not in stderr
    manifest = json.loads((parts_dir(out) / "manifest.json").read_text())
    done = 2 if stage == "part" else len(manifest["chunks"])
    assert f"rerun with --resume: the {done} finished part(s)" in err[0]
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert not [name for name in left if name.endswith(".tmp")], left
    assert not out.exists() and not lock_path(out).exists()
    assert main(cli(env, out, "--resume")[3:]) == 0
    assert_equal_records(out, reference)
