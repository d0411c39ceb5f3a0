"""Start-up of the HTTP service: the model and the feature snapshot, checked and loaded.

`load` is what `churnlens serve` runs before it opens the port, so that a service that
cannot answer never starts: a corrupt, empty, wrong-schema or duplicate-id snapshot, a
model version that does not exist, a truncated model file or an MLflow store that does not
answer within `ServeConfig.registry_timeout_s` each raise one `StartupError` naming what
is wrong and how to fix it (BentoML would restart a failing service worker forever).

A registry model is resolved to its version on every start (an alias may have moved); its
bundle is kept in a local cache folder per store and version, so a restart does not
download it again (`churnlens.serving.model_files`, which fetches it in a child process
while this one imports the scoring stack). Importing this module is cheap: the heavy
imports happen inside `load`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from churnlens.serving import model_files
from churnlens.serving.model_files import FetchError, ModelFetch

ENV_MODEL_URI = "CHURNLENS_MODEL_URI"
ENV_SNAPSHOT = "CHURNLENS_SNAPSHOT"
ENV_MODEL_CACHE = "CHURNLENS_MODEL_CACHE"
ENV_REGISTRY_TIMEOUT = "CHURNLENS_REGISTRY_TIMEOUT"
ENV_WORKSPACE_CACHE = "CHURNLENS_WORKSPACE_CACHE"
DEFAULT_MODEL_URI = "models:/churnlens@champion"
REGISTRY_TIMEOUT_S = 10.0
KEY_COLUMNS = ("customer_id", "cutoff")
# What a truncated or damaged pickle raises while loading (LightGBM's model text, too).
CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError,
           IndexError, KeyError, TypeError)


class StartupError(ValueError):
    """The service cannot start; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ServeConfig:
    """What the service loads: the model, the snapshot, and how long the registry may take."""

    model_uri: str
    snapshot: str | None
    cache_dir: Path | None = None  # None: no model cache
    registry_timeout_s: float = REGISTRY_TIMEOUT_S
    fetch_in_child: bool = True  # False in a `bentoml serve` worker (threads: no fork)
    # Called with the message the moment the model's fetch fails, from another thread
    # (`churnlens serve` prints it and exits); None: the failure is raised by `load`.
    fail_fast: Callable[[str], None] | None = None
    # True in `churnlens serve`'s own process: LightGBM is imported without its
    # scikit-learn adapter (`import_lightgbm_alone`), which nothing there uses.
    lean_imports: bool = False
    workspace_cache: Path | None = None  # the workspace's scores of earlier starts; None: none

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The configuration of a `bentoml serve` worker, from its environment."""
        cache = os.environ.get(ENV_MODEL_CACHE)
        scores = os.environ.get(ENV_WORKSPACE_CACHE)
        return cls(model_uri=os.environ.get(ENV_MODEL_URI) or DEFAULT_MODEL_URI,
                   snapshot=os.environ.get(ENV_SNAPSHOT),
                   cache_dir=Path(cache) if cache else None,
                   registry_timeout_s=float(os.environ.get(ENV_REGISTRY_TIMEOUT)
                                            or REGISTRY_TIMEOUT_S),
                   fetch_in_child=False, workspace_cache=Path(scores) if scores else None)


@dataclass(frozen=True)
class Loaded:
    """The checked model and snapshot a service answers from."""

    model: object  # churnlens.training.bundle.ChurnModel, its info filled in
    model_uri: str  # as /model_info shows it: a registry or run URI, never a local path
    snapshot: object  # pandas.DataFrame: the checked snapshot rows
    prepared: object  # churnlens.serving.core.Prepared: the snapshot encoded once
    seconds: dict | None = None  # start-up step -> seconds ("model": waiting for its fetch)
    from_cache: bool = False  # the model file came from the local cache, not the store
    snapshot_path: str | None = None  # the snapshot file (the workspace cache's key)
    workspace_cache: Path | None = None  # ServeConfig.workspace_cache


_handed_over: Loaded | None = None


def hand_over(loaded: Loaded) -> None:
    """Keep LOADED for the service instance this process creates next (`take`)."""
    global _handed_over
    _handed_over = loaded


def take() -> Loaded | None:
    """What `hand_over` kept (once), or None when the service must load for itself."""
    global _handed_over
    loaded, _handed_over = _handed_over, None
    return loaded


def load(config: ServeConfig) -> Loaded:
    """The model and snapshot of CONFIG, checked; StartupError says what is wrong.

    The snapshot file is checked first; then the model is fetched in a child process
    while this one imports the scoring stack.
    """
    clock = _Clock()
    # First, alone: a broken snapshot is reported in about a second, with no child started.
    table = clock("snapshot file", check_snapshot_file, config.snapshot)
    fetch = clock("registry", _start_fetch, config, table.column_names)
    try:
        prepare = clock("imports", _import_scoring, config.lean_imports)
        frame = clock("to pandas", table.to_pandas)
        model, shown, from_cache = clock("model", _load_model, fetch, config)
    finally:
        fetch.close()
    snapshot = clock("feature check", fit_snapshot, frame, model, config.snapshot)
    prepared = clock("encoding", prepare, model, snapshot)
    return Loaded(model, shown, snapshot, prepared, clock.seconds, from_cache,
                  config.snapshot, config.workspace_cache)


class _Clock:
    """Seconds per start-up step, for the log line that says where start-up time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str, fn, *args):
        import time

        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[step] = time.perf_counter() - t0


def _start_fetch(config: ServeConfig, columns: list[str]) -> ModelFetch:
    """The model's fetch, begun. A version in a local SQLite store is resolved here in
    milliseconds (`churnlens.serving.registry`): a missing one fails at once, and a cached
    one, or one whose artifacts are a local folder, needs no child (and no MLflow) at all.
    A tracking server is asked over its REST API within the registry timeout. The
    snapshot's COLUMNS are checked against the model's features as soon as those are known
    (the cache's list, the signature beside the bundle, or the one the child reads before
    downloading the bundle)."""
    from churnlens.serving import registry

    store = os.environ.get("MLFLOW_TRACKING_URI", "")
    uri = config.model_uri
    try:
        resolved = (registry.resolve_local(uri, store)
                    or registry.resolve_remote(uri, store, config.registry_timeout_s))
    except registry.NotRegistered as exc:
        raise StartupError(model_files.not_found(uri, store, str(exc))) from None
    except registry.Unreachable as exc:
        raise StartupError(model_files.silent_store(store, config.registry_timeout_s, uri)
                           if exc.silent else f"cannot reach the MLflow store {store} for "
                           f"{uri} ({exc}): check MLFLOW_TRACKING_URI and that the server "
                           "is up") from None
    hit = (model_files.local_model(uri) if resolved is None else
           model_files.cached(config.cache_dir, resolved.name, resolved.version,
                              resolved.run_id) or model_files.in_place(resolved))
    if hit and not model_files.complete(hit.bundle):  # truncated: no need to import to see
        if not hit.cached:
            raise StartupError(_corrupt(uri, "the file does not end where a pickle ends"))
        model_files.evict(hit)
        hit = None
    if hit:
        problem = hit.features and missing_features(columns, hit.features, config.snapshot)
        if problem:
            raise StartupError(problem)
        return ModelFetch.ready(hit)
    return ModelFetch(config.model_uri, config.cache_dir, config.registry_timeout_s,
                      in_child=config.fetch_in_child, on_error=config.fail_fast,
                      resolved=resolved,
                      check_features=lambda names: missing_features(columns, names,
                                                                    config.snapshot))


def missing_features(columns: list[str], features, path: str | None) -> str | None:
    """The start-up message when the snapshot's COLUMNS lack some of the model's FEATURES."""
    present = set(columns)
    missing = [name for name in features if name not in present]
    if not missing:
        return None
    return misfit(path, f"missing feature column(s): {', '.join(missing)}")


def misfit(path: str | None, detail: str) -> str:
    return (f"feature snapshot {path} does not fit the model: {detail}; write it again with "
            "the features of this model (`churnlens features --as-of DATE`)")


def _import_scoring(lean: bool):
    """The scoring stack and the HTTP service, imported while the child fetches the model."""
    if lean:
        import_lightgbm_alone()
    import churnlens.serving.service  # noqa: F401 - BentoML, uvicorn, the workspace
    from churnlens.serving.core import prepare

    return prepare


def import_lightgbm_alone() -> None:
    """Import LightGBM with scikit-learn hidden, so its optional scikit-learn adapter
    (lightgbm.compat) is not loaded: that import brings scikit-learn and scipy.stats, about
    a third of a server's import time, for classes a server never uses (it predicts with
    Booster). Only for a process that is a server: LightGBM's LGBMClassifier and friends
    then refuse to work in it. Nothing happens when LightGBM is already imported."""
    import sys

    if "lightgbm" in sys.modules:
        return
    hidden = "sklearn" not in sys.modules
    if hidden:
        sys.modules["sklearn"] = None  # `import sklearn` raises ImportError meanwhile
    try:
        import lightgbm  # noqa: F401
    finally:
        if hidden:
            del sys.modules["sklearn"]


# ---------------------------------------------------------------- the model


def _load_model(fetch: ModelFetch, config: ServeConfig):
    """The ChurnModel FETCH brings, its registry name, version and run id filled in, and
    the URI to show for it, and whether its file came from the cache. A cached file that
    no longer loads is fetched again."""
    try:
        fetched = fetch.result()
        try:
            model = _unpickle(fetched.bundle, config.model_uri)
        except StartupError:
            if not fetched.cached:
                raise
            model_files.evict(fetched)
            again = ModelFetch(fetched.exact_uri, None, config.registry_timeout_s,
                               in_child=config.fetch_in_child)
            try:
                fetched = again.result()
                model = _unpickle(fetched.bundle, config.model_uri)
                model_files.commit(fetched, config.cache_dir, model.feature_names)
            finally:
                again.close()
        else:
            model_files.commit(fetched, config.cache_dir, model.feature_names)
    except FetchError as exc:
        raise StartupError(str(exc)) from None
    if fetched.version is None:
        return model, model_files.shown_uri(config.model_uri), False
    model.info = {**model.info, "name": fetched.name, "version": fetched.version,
                  "run_id": fetched.run_id}
    return model, fetched.exact_uri, fetched.cached


def _unpickle(path: Path, uri: str):
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except CORRUPT as exc:
        raise StartupError(_corrupt(uri, f"{type(exc).__name__}: {str(exc)[:120]}")) from None


def _corrupt(uri: str, detail: str) -> str:
    return (f"the model file of {model_files.shown_uri(uri)} is truncated or corrupt "
            f"({detail}); log the model again with `churnlens train`")


# ---------------------------------------------------------------- the snapshot


def check_snapshot_file(path: str | None):
    """The snapshot at PATH as an Arrow table, its file and key columns checked (pyarrow
    only, so a broken snapshot fails before the scoring stack is imported)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path:
        raise StartupError(f"set {ENV_SNAPSHOT} to a snapshot written by `churnlens features "
                           "--as-of DATE` (churnlens serve does it)")
    if not Path(path).is_file():
        raise StartupError(f"feature snapshot {path} not found; write one with "
                           "`churnlens features --as-of DATE`")
    try:
        # One thread: Arrow's thread pool would not survive the fork of the model's fetch.
        # ParquetFile, not read_table: that imports pyarrow.dataset, and with it pandas
        # (about 2 s), before the failure it may only have to report.
        table = pq.ParquetFile(path).read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StartupError(f"feature snapshot {path} is not a readable parquet file "
                           f"({str(exc).splitlines()[0][:160]}); write it again with "
                           "`churnlens features --as-of DATE`") from None
    missing = [c for c in KEY_COLUMNS if c not in table.column_names]
    if missing:
        raise StartupError(f"feature snapshot {path} lacks column(s) {', '.join(missing)}: "
                           "not a churnlens feature snapshot (`churnlens features --as-of "
                           "DATE` writes one)")
    if table.num_rows == 0:
        raise StartupError(f"feature snapshot {path} holds no customers (0 rows): write it "
                           "for a date on which customers are active")
    cutoff = table.column("cutoff")
    if not pa.types.is_timestamp(cutoff.type) or cutoff.null_count:
        raise StartupError(f"feature snapshot {path}: column cutoff must hold a timestamp on "
                           f"every row (found {cutoff.type}, {cutoff.null_count} empty): not "
                           "a churnlens feature snapshot")
    ids = pc.cast(table.column("customer_id"), pa.string())
    if ids.null_count:
        raise StartupError(f"feature snapshot {path}: {ids.null_count} rows have no "
                           "customer_id; it needs one row per customer")
    # Counted first: comparing with a Python number makes pyarrow import pandas (2 s).
    if pc.count_distinct(ids).as_py() < len(ids):
        counts = pc.value_counts(ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        extra = pc.sum(repeated.field("counts")).as_py() - len(repeated)
        examples = repeated.field("values").to_pylist()[:3]
        raise StartupError(f"feature snapshot {path} holds {extra} duplicate customer ids, "
                           f"e.g. {examples}; it needs one row per customer")
    return table.set_column(table.column_names.index("customer_id"), "customer_id", ids)


def fit_snapshot(frame, model, path: str | None):
    """FRAME (the snapshot's rows) checked against MODEL's features and coerced once."""
    from churnlens.serving.core import FeatureInputError, check_features

    try:
        return check_features(model, frame).reset_index(drop=True)
    except FeatureInputError as exc:
        raise StartupError(misfit(path, str(exc))) from None
