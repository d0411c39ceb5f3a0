"""The served model's file: resolved in the registry, cached locally, fetched in a child.

`ModelFetch` starts a forked child process that imports MLflow, resolves a registry URI
to its version and downloads the model's bundle into a local cache (once per store and
version), while the server process imports the scoring stack and reads the snapshot: the
two take seconds each, and a machine has at least two cores. A remote tracking server is
given `timeout_s` seconds to answer from the moment MLflow is imported; a child that
overruns is killed, so an unreachable server fails start-up with one message.

Importing this module is cheap (no MLflow, no pandas): it runs before the fork.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

BUNDLE = "bundle.pkl"
FEATURES = "features.json"  # beside a cached bundle: the model's feature names
# Stores reached over the network, which may not answer; a local SQLite or file store
# cannot hang, but may take seconds to open on a busy machine.
REMOTE = ("http://", "https://", "databricks")


class FetchError(ValueError):
    """The model cannot be fetched; the message says why and what to do."""


@dataclass(frozen=True)
class Fetched:
    """Where the model's bundle lies, and which registry version it is (None for a run
    or path URI)."""

    bundle: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    cached: bool = False  # True: BUNDLE is the cache's file; False: a fresh download
    features: tuple[str, ...] | None = None  # the model's feature names, when known

    @property
    def exact_uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.version else None


class ModelFetch:
    """Fetch URI's bundle in a child process; `result` waits for it.

    cache_dir: root of the per-store, per-version cache (None: download to a temporary
    folder, removed by `close`). timeout_s: how long the store may take to answer.
    in_child: False fetches in this process when `result` is called (a `bentoml serve`
    worker, whose threads make forking unsafe); the store is then bounded only by
    MLFLOW_HTTP_REQUEST_TIMEOUT. on_error: called with the message as soon as the fetch
    fails (from a watcher thread, while this process may still be importing), so a
    missing model or a silent store ends start-up without waiting for the imports.
    resolved: the registry version already resolved (`churnlens.serving.registry`), so the
    child does not ask the store again. check_features: called with the model's feature
    names as soon as the child has read them (before the bundle's download); a message it
    returns fails the fetch (a snapshot that cannot fit this model).
    """

    def __init__(self, uri: str, cache_dir: Path | None, timeout_s: float,
                 in_child: bool = True, on_error: Callable[[str], None] | None = None,
                 resolved=None, check_features: Callable[[list[str]], str | None] | None = None):
        self.uri, self.timeout_s = uri, timeout_s
        self.scratch = Path(tempfile.mkdtemp(prefix="churnlens-model-"))
        self.cache_dir, self.resolved, self.check_features = cache_dir, resolved, check_features
        self.child = self.watcher = self.outcome = None
        if not in_child:
            return
        context = multiprocessing.get_context("fork")
        self.conn, child_conn = context.Pipe(duplex=False)
        self.child = context.Process(target=_child, daemon=True, name="churnlens-model-fetch",
                                     args=(child_conn, uri, cache_dir, self.scratch, resolved))
        self.child.start()
        child_conn.close()
        self.watcher = threading.Thread(target=self._watch, args=(on_error,), daemon=True)
        self.watcher.start()

    def _watch(self, on_error: Callable[[str], None] | None) -> None:
        try:
            self.outcome = ("done", self._wait())
        except FetchError as exc:
            self.outcome = ("error", str(exc))
            if on_error is not None:
                self.close()  # on_error exits the process: no child or scratch left behind
                on_error(str(exc))

    @classmethod
    def ready(cls, fetched: Fetched) -> ModelFetch:
        """A fetch that is already done (the cached bundle of a resolved version)."""
        fetch = cls(fetched.exact_uri or str(fetched.bundle), None, 0.0, in_child=False)
        fetch.outcome = ("done", fetched)
        return fetch

    def result(self) -> Fetched:
        """The fetched bundle; FetchError when the store fails, refuses or overruns."""
        if self.outcome is not None and self.child is None:
            outcome = self.outcome
        elif self.child is None:
            outcome = _outcome(self.uri, self.cache_dir, self.scratch, self.resolved)
        else:
            self.watcher.join()
            outcome = self.outcome
        if outcome[0] == "error":
            raise FetchError(outcome[1])
        return outcome[1]

    def _wait(self) -> Fetched:
        store = os.environ.get("MLFLOW_TRACKING_URI", "the default MLflow store")
        deadline = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.conn.poll(wait):
                self.child.kill()
                raise FetchError(silent_store(store, self.timeout_s, self.uri))
            try:
                kind, value = self.conn.recv()
            except EOFError:
                raise FetchError(f"fetching {self.uri} stopped (exit status "
                                 f"{self.child.exitcode}); see the lines above") from None
            if kind == "imported":
                if store.startswith(REMOTE):
                    deadline = value + self.timeout_s  # CLOCK_MONOTONIC is system-wide
            elif kind == "features":
                problem = self.check_features(value) if self.check_features else None
                if problem:
                    raise FetchError(problem)
            elif kind == "error":
                raise FetchError(value)
            else:
                return value

    def close(self) -> None:
        """Stop the child if it still runs and remove the scratch folder."""
        if self.child is not None:
            if self.child.is_alive():
                self.child.kill()
            self.child.join(timeout=1)
        shutil.rmtree(self.scratch, ignore_errors=True)


def commit(fetched: Fetched, cache_dir: Path | None, features: list[str]) -> None:
    """Move a freshly downloaded bundle into the cache, once it has been loaded whole, with
    the model's FEATURES beside it (a restart checks the snapshot against them at once)."""
    if fetched.cached or cache_dir is None or not fetched.version:
        return
    folder = cache_folder(cache_dir, fetched.name, fetched.version, fetched.run_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staged-"))
    shutil.copyfile(fetched.bundle, staged / BUNDLE)
    (staged / FEATURES).write_text(json.dumps(list(features)))
    try:
        staged.rename(folder)
    except OSError:  # another server cached it meanwhile: that copy is as good
        shutil.rmtree(staged, ignore_errors=True)


def evict(fetched: Fetched) -> None:
    """Drop a cached bundle that does not load, so the next start downloads it again."""
    if fetched.cached:
        shutil.rmtree(fetched.bundle.parent, ignore_errors=True)


def cached(root: Path | None, name: str, version: str, run_id: str | None) -> Fetched | None:
    """The cache's bundle of this exact version, or None when it is not cached."""
    if root is None:
        return None
    folder = cache_folder(root, name, version, run_id)
    if not (folder / BUNDLE).is_file():
        return None
    try:
        features = tuple(json.loads((folder / FEATURES).read_text()))
    except (OSError, ValueError):
        features = None  # cached by an older churnlens: checked once the model is loaded
    return Fetched(folder / BUNDLE, name, version, run_id, cached=True, features=features)


def in_place(resolved) -> Fetched | None:
    """The bundle of RESOLVED (`registry.Resolved`) read where it lies, when its artifacts
    are a local folder; None otherwise (it is downloaded)."""
    folder = resolved.local_folder()
    if folder is None or not (folder / "artifacts" / BUNDLE).is_file():
        return None
    features = signature_features(folder / "MLmodel")
    return Fetched(folder / "artifacts" / BUNDLE, resolved.name, resolved.version,
                   resolved.run_id, features=tuple(features) if features else None)


def complete(bundle: Path) -> bool:
    """Whether BUNDLE ends with pickle's STOP opcode (a truncated copy does not)."""
    try:
        with open(bundle, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"."
    except OSError:
        return False


def local_model(uri: str) -> Fetched | None:
    """The bundle of a model given as a local folder (a path or file:// URI, as
    `mlflow.artifacts.download_artifacts` takes it), read where it lies; None otherwise."""
    if uri.startswith(("models:/", "runs:/")) or "://" in uri.removeprefix("file://"):
        return None
    folder = Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)
    bundle = folder / "artifacts" / BUNDLE
    if not bundle.is_file():
        return None
    features = signature_features(folder / "MLmodel")
    return Fetched(bundle, features=tuple(features) if features else None)


def cache_folder(root: Path, name: str, version: str, run_id: str | None) -> Path:
    """Versions are numbered per store: the store's URI is part of the key."""
    store = os.environ.get("MLFLOW_TRACKING_URI", "")
    key = hashlib.sha256(store.encode()).hexdigest()[:12]
    return root / key / f"{name}-v{version}-{(run_id or '')[:12]}"


def shown_uri(uri: str) -> str:
    """URI as clients may see it: registry and run URIs as given, a local path by name."""
    if uri.startswith(("models:/", "runs:/")):
        return uri
    return f"local model {Path(uri.removeprefix('file://')).name!r}"


# ---------------------------------------------------------------- in the child


def _child(conn, uri: str, cache_dir: Path | None, scratch: Path, resolved) -> None:
    import mlflow.tracking  # noqa: F401 - the import is not the store's time

    conn.send(("imported", time.monotonic()))
    conn.send(_outcome(uri, cache_dir, scratch, resolved,
                       lambda names: conn.send(("features", names))))


def _outcome(uri: str, cache_dir: Path | None, scratch: Path, resolved=None,
             tell_features: Callable[[list[str]], None] | None = None) -> tuple[str, object]:
    """("done", Fetched) or ("error", message)."""
    from mlflow.exceptions import MlflowException

    try:
        return "done", _fetch(uri, cache_dir, scratch, resolved, tell_features)
    except FetchError as exc:
        return "error", str(exc)
    except MlflowException as exc:
        return "error", (f"cannot load model {shown_uri(uri)}: "
                         f"{str(exc.message).splitlines()[0]}")
    except OSError as exc:  # the store's host or files cannot be reached at all
        return "error", f"cannot reach the model {shown_uri(uri)}: {type(exc).__name__}: {exc}"


def _fetch(uri: str, cache_dir: Path | None, scratch: Path, resolved=None,
           tell_features: Callable[[list[str]], None] | None = None) -> Fetched:
    if not uri.startswith("models:/"):
        _tell_features(uri, scratch, tell_features)
        return Fetched(_download(uri, scratch))
    name, version, run_id = ((resolved.name, resolved.version, resolved.run_id) if resolved
                             else _resolve(uri))
    hit = cached(cache_dir, name, version, run_id)
    if hit is not None:
        return hit
    exact = f"models:/{name}/{version}"
    _tell_features(exact, scratch, tell_features)
    return Fetched(_download(exact, scratch), name, version, run_id)


def _tell_features(uri: str, scratch: Path, tell: Callable[[list[str]], None] | None) -> None:
    """Send the feature names of URI's signature (its small MLmodel file) to TELL, before
    the bundle's download; nothing when the model has no readable signature."""
    if tell is None:
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel",
                                                    dst_path=str(scratch / "signature"))
    except (MlflowException, OSError):
        return  # the bundle's download says what is wrong with the model, if anything
    names = signature_features(Path(local))
    if names is not None:
        tell(names)


def signature_features(mlmodel: Path) -> list[str] | None:
    """The input column names of the signature in an MLmodel file (None: none readable)."""
    import yaml

    try:
        inputs = yaml.safe_load(mlmodel.read_text())["signature"]["inputs"]
        return [col["name"] for col in json.loads(inputs)]
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _resolve(uri: str) -> tuple[str, str, str]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient, get_tracking_uri

    name, _, tail = uri.removeprefix("models:/").rstrip("/").partition("/")
    name, _, alias = name.partition("@")
    try:
        client = MlflowClient()
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, tail))
    except MlflowException as exc:
        raise FetchError(not_found(uri, get_tracking_uri(), str(exc.message))) from None
    return name, str(mv.version), mv.run_id


def silent_store(store: str, timeout_s: float, uri: str) -> str:
    """The message for a tracking server that did not answer within TIMEOUT_S."""
    return (f"the MLflow store {store} did not answer within {timeout_s:g} s for {uri}: check "
            "MLFLOW_TRACKING_URI and that the server is up (--registry-timeout sets the limit)")


def not_found(uri: str, store: str, detail: str) -> str:
    """The message for a registry URI the store does not hold."""
    return (f"model {uri} not found in {store}: {detail.splitlines()[0]}; train one with "
            "`churnlens train` or pass --model-uri")


def _download(uri: str, into: Path) -> Path:
    """The bundle file of the model at URI (registry, run or local path), under INTO."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/artifacts/{BUNDLE}", dst_path=str(into)))
    except (MlflowException, OSError) as exc:
        msg = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise FetchError(f"cannot load model {shown_uri(uri)}: {msg.splitlines()[0]} (is it "
                         "a model logged by `churnlens train`?)") from None
    if not local.is_file():
        raise FetchError(f"{shown_uri(uri)} is not a churnlens model (no artifacts/{BUNDLE})")
    return local
