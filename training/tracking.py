"""MLflow: where runs go, the pyfunc model, its data inputs, the registry and the gate.

Local by default: a SQLite store `mlflow.db` and artifacts under `mlruns/` in the working
directory; MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params.yaml) points elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnlens.settings import MlflowSettings
from churnlens.training.bundle import ChurnModel
from churnlens.training.evaluation import promotion_floor
from churnlens.training.progress import mlflow_prints_off
from churnlens.training.scoring import score_frame

STAGES = ("features", "training", "serving")
CHAMPION = "champion"
# The experiment tag by which MLflow 3's UI tells a classic model-training experiment from
# a GenAI one (whose page opens on traces and an overview instead of the runs).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI picks the experiment page from its sidebar switch (GenAI / Model
# training, kept per browser, GenAI by default) rather than from that tag; this query
# parameter sets the switch, so a link with it opens on the runs in any browser.
RUNS_QUERY = "workflowType=machine_learning"
EXPERIMENT_NOTE = ("churnlens training runs: one run per `churnlens train`, with its data "
                   "inputs, metrics, plots, report and the registered model. A model-training "
                   "experiment: in the UI's sidebar choose \"Model training\" to see its runs.")
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")  # the model, logged as code


class TrackingError(ValueError):
    """The MLflow store cannot be reached or refuses a call; the message says which store
    and how to fix it."""


def configure(settings: MlflowSettings) -> str:
    """Point MLflow at the configured store and experiment; return the tracking URI.

    A new experiment is created as a model-training experiment (EXPERIMENT_KIND), and an
    existing one without a kind gets it; a kind someone chose in the UI is kept.
    TrackingError: the store does not answer or refuses (a tracking server that is down,
    a wrong address, missing credentials), instead of MLflow's traceback.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        _set_experiment(settings, uri)
    except MlflowException as exc:
        raise TrackingError(_store_error(uri, exc)) from None
    return uri


def _store_error(uri: str, exc: MlflowException) -> str:
    """One line on why the store at URI failed: no answer at all, or the answer it gave."""
    from mlflow.exceptions import RestException

    line = str(exc.message).splitlines()[0]
    first = line[:300]
    if not uri.startswith(("http://", "https://")):
        return f"the MLflow store {uri} failed: {first}"
    if isinstance(exc, RestException):  # it answered: a refusal (credentials, permissions)
        return (f"the MLflow tracking server {uri} refused: {first}; check the credentials "
                "(MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD)")
    # MLflow nests the socket's error in two layers of urllib3 text: keep the error itself.
    reason = re.search(r"\[Errno -?\d+\] [^'\")]+", line)
    return (f"the MLflow tracking server {uri} cannot be reached "
            f"({reason.group(0) if reason else first}): check "
            "MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params.yaml) and that the "
            "server is up")


def _set_experiment(settings: MlflowSettings, uri: str) -> None:
    key, kind = EXPERIMENT_KIND
    tags = {key: kind, "mlflow.note.content": EXPERIMENT_NOTE}
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
            # Artifacts beside the store, not wherever the process happened to start.
            location = (Path.cwd() / "mlruns").resolve().as_uri()
        mlflow.create_experiment(settings.experiment, artifact_location=location, tags=tags)
    else:
        for name, value in tags.items():
            if name not in experiment.tags:
                MlflowClient().set_experiment_tag(experiment.experiment_id, name, value)
    mlflow.set_experiment(settings.experiment)


def runs_page(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI page of an experiment's runs: on the tracking server itself when TRACKING_URI
    is one (http/https), else on UI (where `mlflow ui` listens by default)."""
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else ui
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_QUERY}"


def log_datasets(slices: dict[str, pd.DataFrame], source, target: str = "churned") -> None:
    """Log each slice as a dataset input of the active run, CONTEXT -> frame, e.g.
    {"training": train, "test": test}: name, source, schema, row count and a digest.

    Only that metadata is stored, never the rows. The digest hashes every row
    (pandas' vectorised row hash, about 0.1 s for 90k rows): MLflow's own looks at the
    first 10,000 rows but types every cell of the frame first, which took 2 s.
    """
    origin = "in-memory tables" if isinstance(source, dict) else Path(source).resolve().as_uri()
    for context, frame in slices.items():
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest = hashlib.md5(rows.tobytes()).hexdigest()[:16]
        with warnings.catch_warnings():
            # A local path matches two equivalent source types, and integer columns draw a
            # hint about missing values at serving time: neither applies to a data input.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(frame, source=origin, name=context, digest=digest,
                                              targets=target if target in frame else None)
            mlflow.log_input(dataset, context=context)


def _package_tree(out: Path) -> Path:
    """Copy the churnlens package, as imported, into OUT/churnlens; return that folder.

    The stages live in their own folders in the repository and are mapped into the one
    package on install, so the tree is assembled from each sub-package's location.
    """
    import shutil

    import churnlens

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root = out / "churnlens"
    shutil.copytree(Path(churnlens.__file__).parent, root, ignore=ignore)
    for stage in STAGES:
        module = importlib.import_module(f"churnlens.{stage}")
        shutil.copytree(Path(module.__file__).parent, root / stage, ignore=ignore,
                        dirs_exist_ok=True)
    return root


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("pandas", "numpy", "scipy", "scikit-learn", "lightgbm", "lifelines", "duckdb",
             "pyarrow", "pydantic", "pyyaml", "mlflow")
    return [f"{n}=={version(n)}" for n in names]


def log_model(model: ChurnModel, example: pd.DataFrame) -> str:
    """Log the bundle as the pyfunc `churnlens` in the active run; return its model URI.

    The pyfunc is logged as code (PYFUNC_CODE) with the pickled bundle as its artifact and
    the churnlens package in `code_paths`, so the model loads where churnlens is not
    installed; EXAMPLE's first rows give the signature and the input example.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.pkl"
        path.write_bytes(pickle.dumps(model))
        inputs = plain_inputs(model, example.head(200))
        info = mlflow.pyfunc.log_model(
            name="churnlens",
            python_model=str(PYFUNC_CODE),
            artifacts={"bundle": str(path)},
            code_paths=[str(_package_tree(Path(tmp) / "code"))],
            signature=_signature(model, inputs, score_frame(model, inputs)),
            input_example=inputs.head(3),
            pip_requirements=_requirements(),
        )
    return info.model_uri


def _signature(model: ChurnModel, inputs: pd.DataFrame, outputs: pd.DataFrame):
    """Inputs: every feature optional (a null means unknown, e.g. no NPS answer yet)."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, Schema

    cols = [ColSpec(DataType.double if f.kind == "numeric" else DataType.string, f.name,
                    required=False) for f in model.features]
    return ModelSignature(inputs=Schema(cols),
                          outputs=infer_signature(inputs, outputs).outputs)


def plain_inputs(model: ChurnModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Feature columns as plain types (str and float), as the pyfunc signature expects.

    MLflow infers pandas categories as strings and then refuses them at the schema check;
    the model casts strings back to its training categories itself.
    """
    out = frame[model.feature_names].copy()
    for f in model.features:
        if f.kind == "category":
            col = out[f.name].astype(object)
            out[f.name] = col.where(col.notna(), None)
    return out


def load_bundle(model_uri: str) -> ChurnModel:
    """Load the ChurnModel inside a logged pyfunc (runs:/..., models:/NAME@alias, a path)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri.rstrip('/')}")
    bundle = Path(local) / "artifacts" / "bundle.pkl"
    if not bundle.exists():
        raise FileNotFoundError(f"{model_uri} is not a churnlens model (no artifacts/bundle.pkl)")
    with open(bundle, "rb") as fh:
        return pickle.load(fh)


@dataclass
class GateResult:
    version: str
    promoted: bool
    reason: str
    champion_version: str | None
    challenger_auc: float
    champion_auc: float | None


def register_and_gate(model_uri: str, name: str, metrics: dict[str, float],
                      test: pd.DataFrame, promote: str = "auto") -> GateResult:
    """Register the model; move the champion alias only when it clears the promotion floor
    (`evaluation.promotion_floor`: beats the logistic baseline and the base rate on the test
    slice) and wins against the champion on the same test rows.

    metrics: the run's `test.*` metrics. promote: "auto" as above (a first champion too must
    clear the floor); "force" always moves the alias; "never" registers only.
    """
    from sklearn.metrics import roc_auc_score

    challenger_auc = metrics["test.risk.roc_auc"]
    client = MlflowClient()
    with mlflow_prints_off():
        version = mlflow.register_model(model_uri, name).version
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    champion_auc = None
    if current is not None:
        champ = load_bundle(f"models:/{name}/{current.version}")
        labelled = test[test["churned"].notna()]
        probs = score_frame(champ, labelled)["churn_probability"]
        champion_auc = float(roc_auc_score(labelled["churned"].astype(int), probs))
    clears, floor = promotion_floor(metrics)
    if promote == "never":
        promoted, reason = False, "promotion disabled (--promote never)"
    elif promote == "force":
        promoted = True
        reason = "promotion forced (--promote force)" + ("" if clears else f"; {floor}")
    elif not clears:
        promoted, reason = False, f"{floor}; `--promote force` promotes it anyway"
    elif current is None:
        promoted, reason = True, f"no champion yet; it {floor}"
    elif challenger_auc > champion_auc:
        promoted = True
        reason = (f"challenger AUC {challenger_auc:.4f} beats champion v{current.version} "
                  f"{champion_auc:.4f} by {challenger_auc - champion_auc:+.4f}")
    else:
        promoted = False
        reason = (f"champion v{current.version} keeps the alias: its AUC {champion_auc:.4f} "
                  f"vs challenger {challenger_auc:.4f} ({challenger_auc - champion_auc:+.4f})")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return GateResult(str(version), promoted, reason,
                      None if current is None else str(current.version),
                      challenger_auc, champion_auc)


def describe(run_id: str, run_text: str, name: str, version: str, version_text: str) -> None:
    """Set the descriptions the MLflow UI shows: the run's (its note) and the version's."""
    MlflowClient().set_tag(run_id, "mlflow.note.content", run_text)
    MlflowClient().update_model_version(name, version, description=version_text)
