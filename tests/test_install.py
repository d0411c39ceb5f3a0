"""Installed, churnlens is one import name and never imports a user's own folders.

The wheel is built from the files a clean clone holds (no stale build/ folder can leak into
it) and installed into a fresh venv without pip; that venv finds the dependencies in this
venv's site-packages through a .pth line, which adds them to sys.path without running this
venv's own .pth files (so the editable install of churnlens is not visible there).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import free_port, stop_server, wait_ready

# Builds a wheel and runs the installed CLI in fresh processes: make test, not test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {"churnlens": "churnlens", "features": "churnlens/features",
                  "training": "churnlens/training", "serving": "churnlens/serving",
                  "cli": "churnlens/cli"}
USER_PACKAGES = ("features", "training", "serving", "cli")


def clean_tree(out: Path) -> Path:
    """The repository's files as a clean clone (plus files not yet committed) would hold them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / name)
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """churnlens' wheel, built offline (no build isolation) from a clean copy of the tree."""
    root = tmp_path_factory.mktemp("wheel")
    src = clean_tree(root / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True)
    (found,) = (root / "dist").glob("churnlens-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; dependencies come from this venv by a .pth line."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run([str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet",
                    "--python", str(python), "--no-deps", str(wheel)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "churnlens-test-deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    return root


@pytest.fixture(scope="module")
def hostile_cwd(tmp_path_factory) -> Path:
    """A user's project folder holding its own features/, training/, serving/ and cli/
    packages, each of which fails loudly if it is ever imported."""
    root = tmp_path_factory.mktemp("user-project")
    for name in USER_PACKAGES:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name}/ package was imported')\n")
    return root


def run(python_or_script: Path | str, *args: str, cwd: Path, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(python_or_script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout,
                          env={**(env or os.environ), "MLFLOW_DISABLE_TELEMETRY": "true"})


def test_the_wheel_adds_one_top_level_import_name(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        paths = [row[0] for row in csv.reader(io.StringIO(zf.read(record).decode()))]
        (top_level,) = [n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt")]
        declared = zf.read(top_level).decode().split()
    names = {p.split("/")[0].removesuffix(".py") for p in paths
             if not p.split("/")[0].endswith((".dist-info", ".data"))}
    assert names == {"churnlens"}
    assert declared == ["churnlens"]


def test_the_wheel_holds_every_module_and_the_settings_template(wheel):
    # A new sub-package missing from pyproject's packages list would silently be left out.
    with zipfile.ZipFile(wheel) as zf:
        inside = set(zf.namelist())
    expected = {"churnlens/params.yaml"}
    for folder, package in SOURCE_FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    assert expected - inside == set()
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("churnlens/params.yaml") == (ROOT / "params.yaml").read_bytes()


def wheel_modules(wheel: Path) -> set[str]:
    """Dotted names of the wheel's Python modules (churnlens.cli.app, ...)."""
    with zipfile.ZipFile(wheel) as zf:
        return {n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                for n in zf.namelist() if n.endswith(".py")}


def test_installed_only_churnlens_imports(wheel, venv, tmp_path):
    python = venv / "bin" / "python"
    # Every module is found in the venv's copy (found, not imported: importing them all
    # would cost MLflow's and BentoML's start-up for nothing the features test misses).
    script = ("import importlib.util, json, churnlens.settings, churnlens.cli\n"
              f"names = {sorted(wheel_modules(wheel))!r}\n"
              "print(json.dumps({n: importlib.util.find_spec(n).origin for n in names}))")
    done = run(python, "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    origins = json.loads(done.stdout)
    assert "churnlens.serving.service" in origins and "churnlens.cli.__main__" in origins
    outside = {n: o for n, o in origins.items() if not Path(o).is_relative_to(venv)}
    assert outside == {}  # the wheel's copy, not the repository's
    for name in USER_PACKAGES:
        done = run(python, "-c", f"import {name}", cwd=tmp_path)
        assert done.returncode == 1 and f"No module named '{name}'" in done.stderr, name


def test_features_from_a_folder_with_its_own_packages(venv, hostile_cwd):
    # The wheel's console script, and `python -m` of the editable install, which puts the
    # working directory first on sys.path.
    from churnlens.features.sample import generate_sample, write_sample

    write_sample(generate_sample(200, seed=0), hostile_cwd / "data" / "sample")
    script = venv / "bin" / "churnlens"
    for command in ([str(script)], [sys.executable, "-m", "churnlens.cli"]):
        done = run(command[0], *command[1:], "features", "--as-of", "2026-10-31",
                   cwd=hostile_cwd)
        assert done.returncode == 0, done.stderr
        assert "wrote feature snapshot of" in done.stdout
    assert (hostile_cwd / "work" / "snapshots" / "features-2026-10-31.parquet").is_file()


@pytest.mark.slow
def test_serve_from_a_folder_with_its_own_packages(venv, hostile_cwd, trained_env):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = hostile_cwd / "serve.log"
    metrics_dir = hostile_cwd / "prometheus"  # not shared with the session's other server
    metrics_dir.mkdir()
    env = {**trained_env.env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "churnlens"), "serve", "--port", str(port),
             "--snapshot", str(trained_env.snapshot)],
            cwd=hostile_cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_ready(proc, url, log)
        import pandas as pd

        customer = pd.read_parquet(trained_env.snapshot, columns=["customer_id"]).iloc[0, 0]
        answer = httpx.post(f"{url}/score_customer", timeout=60,
                            json={"customers": [{"customer_id": customer}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["customer_id"] == customer
    finally:
        stop_server(proc)
    assert "the user's own" not in log.read_text()  # no user package was imported
