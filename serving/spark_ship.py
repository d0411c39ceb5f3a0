"""Ship the churnlens package to a Spark cluster's executors.

The Spark engine's tasks unpickle the model and run the scoring core on the executors, so
every executor's Python must import ``churnlens``. On ``local[...]`` the executors are this
process's venv; on a cluster they are not, and `ship_package` sends the package with the job:
it zips churnlens *as installed* (importable layout ``churnlens/``, ``churnlens/features/``,
``churnlens/training/``, ``churnlens/serving/``, ``churnlens/cli/``, with the package data
such as ``churnlens/params.yaml`` and the workspace page), built from where Python imports
each package from (an editable install maps the repository's top-level folders into
``churnlens``, so the repository's layout is not the importable one), and adds the zip to the
session with ``SparkContext.addPyFile``: Spark puts it on every executor's ``sys.path``,
also on executors that start later (a replaced worker).

The executors still need churnlens's dependencies (pandas, pyarrow, lightgbm, scikit-learn,
...) in their Python: install them on the nodes, or point ``spark.pyspark.python`` at a
Python that has them.

With spark-submit instead of ``churnlens score --master``, ship the package yourself:

* ``--py-files``: build the zip once with
  ``python -c "from churnlens.serving.spark_ship import build_zip; print(build_zip())"``
  and pass it: ``spark-submit --py-files /path/churnlens-<hash>.zip job.py``; or
* a wheel installed on every node: ``pip wheel --no-deps . -w dist`` in the repository,
  then ``pip install dist/churnlens-*.whl`` into the nodes' Python (with its dependencies);
  nothing needs shipping then, and ``ship_package`` is harmless (the zip shadows nothing
  else: it holds only churnlens).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "churnlens"
# Fixed entry times: the same package gives the same bytes, hence the same file name.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def _locations(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot ship {name}: it is not an importable package here "
                          f"(python {sys.executable}); install churnlens (pip install -e .)")
    return [Path(p) for p in spec.submodule_search_locations]


def _mapped_children(name: str) -> set[str]:
    # An editable install's finder (setuptools) knows packages that live outside their
    # parent's folder (package-dir): churnlens.features is /repo/features, for instance.
    found = set()
    for finder in sys.meta_path:
        module = sys.modules.get(getattr(finder, "__module__", ""))
        mapping = getattr(module, "MAPPING", None)
        if isinstance(mapping, dict):
            found |= {k.rpartition(".")[2] for k in mapping if k.rpartition(".")[0] == name}
    return found


def package_files(name: str = PACKAGE) -> dict[str, Path]:
    """Every file of package NAME and its sub-packages, by its path inside the archive
    (``churnlens/features/loading.py``); caches and compiled files left out.

    Raises ImportError when NAME (or a sub-package) is not importable.
    """
    files: dict[str, Path] = {}
    children = set(_mapped_children(name))
    prefix = name.replace(".", "/")
    for location in _locations(name):
        for path in sorted(location.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                children.add(path.name)  # a sub-package: walked as its own import
            elif path.is_dir() and path.name not in _SKIP_DIRS:
                for inner in sorted(path.rglob("*")):  # package data (static/...)
                    if inner.is_file() and not _SKIP_DIRS & set(inner.parts):
                        files[f"{prefix}/{inner.relative_to(location).as_posix()}"] = inner
            elif path.is_file() and path.suffix not in _SKIP_SUFFIXES:
                files[f"{prefix}/{path.name}"] = path
    for child in sorted(children):
        files |= package_files(f"{name}.{child}")
    return files


def build_zip(folder: Path | None = None) -> Path:
    """Zip churnlens as installed into FOLDER (default: churnlens-ship under the system
    temp folder) as ``churnlens-<content hash>.zip``; the path. The same package gives the
    same file, written once (a complete file or none: written aside, then renamed).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, path in sorted(package_files().items()):
            info = zipfile.ZipInfo(arcname, _EPOCH)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            z.writestr(info, path.read_bytes())
    data = buf.getvalue()
    folder = Path(folder or Path(tempfile.gettempdir()) / "churnlens-ship")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{PACKAGE}-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    if not out.is_file():
        partial = out.with_suffix(f".{id(buf)}.partial")
        partial.write_bytes(data)
        partial.replace(out)
    return out


def ship_package(spark, folder: Path | None = None) -> Path:
    """Build the package zip (`build_zip`) and add it to SPARK's executors' Python path.

    The file stays where it is for the session's life: executors that join later fetch it
    from the driver then. Returns the zip's path.
    """
    path = build_zip(folder)
    spark.sparkContext.addPyFile(str(path))
    return path
