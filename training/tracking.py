"""MLflow: where runs go, the pyfunc model, the registry and the promotion gate.

Local by default: a SQLite store `mlflow.db` and artifacts under `mlruns/` in the working
directory; MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params.yaml) points elsewhere.
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnlens.settings import MlflowSettings
from churnlens.training.bundle import ChurnModel

STAGES = ("features", "training", "serving")
CHAMPION = "champion"


def configure(settings: MlflowSettings) -> str:
    """Point MLflow at the configured store and experiment; return the tracking URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        location = None
        if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
            # Artifacts beside the store, not wherever the process happened to start.
            location = (Path.cwd() / "mlruns").resolve().as_uri()
        mlflow.create_experiment(settings.experiment, artifact_location=location)
    mlflow.set_experiment(settings.experiment)
    return uri


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: feature rows in, flat score columns out."""

    def load_context(self, context):
        with open(context.artifacts["bundle"], "rb") as fh:
            self.model: ChurnModel = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from churnlens.serving.core import score_frame

        return score_frame(self.model, model_input)


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
    """Log the bundle as the pyfunc `churnlens` in the active run; return its model URI."""
    from churnlens.serving.core import score_frame

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.pkl"
        path.write_bytes(pickle.dumps(model))
        inputs = plain_inputs(model, example.head(200))
        info = mlflow.pyfunc.log_model(
            name="churnlens",
            python_model=ChurnPyfunc(),
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


def register_and_gate(model_uri: str, name: str, challenger_auc: float, test: pd.DataFrame,
                      promote: str = "auto") -> GateResult:
    """Register the model; move the champion alias only when it wins on the same test rows.

    promote: "auto" compares test ROC-AUC with the current champion scored on the SAME test
    rows; "force" always moves the alias; "never" registers only.
    """
    from sklearn.metrics import roc_auc_score

    from churnlens.serving.core import score_frame

    client = MlflowClient()
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
    if promote == "never":
        promoted, reason = False, "promotion disabled (--promote never)"
    elif promote == "force":
        promoted, reason = True, "promotion forced (--promote force)"
    elif current is None:
        promoted, reason = True, "no champion yet"
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
