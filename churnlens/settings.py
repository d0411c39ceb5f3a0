"""Typed, frozen settings read once from params.yaml.

`load_settings(path)` is called by the command line entry points only; library functions
receive the pieces they need as arguments. Unknown keys and bad values are rejected with a
message naming the key, so a typo in params.yaml never silently falls back to a default.

The field defaults below are the values of the commented template shipped with the package
(`churnlens/params.yaml`, what `churnlens init` writes, equal to the repository's
params.yaml): without a settings file churnlens runs on exactly those values. The tests
hold the three equal.

This module is the ground floor: every stage imports it, and it imports no stage.
"""

from __future__ import annotations

from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

TEMPLATE_NAME = "params.yaml"


class SettingsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _to_the_letter(cls, value, info):
        # pydantic reads true as 1 and "90" as 90; YAML reads yes/no/on/off as booleans. No
        # setting is a boolean, and a quoted number is text: refuse both rather than guess.
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, bool) for item in items):
            raise ValueError("a boolean (YAML reads true/false/yes/no/on/off as one) is not a "
                             "valid value here; write the number or quote the text")
        if cls.model_fields[info.field_name].annotation in (int, float) \
                and isinstance(value, str) and _is_number(value):
            raise ValueError("a quoted number is text; write the number without quotes")
        return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class DataSettings(_Frozen):
    source: Path = Path("data/sample")
    observed_until: str | None = None

    @field_validator("observed_until", mode="before")
    @classmethod
    def _date_to_str(cls, value):
        # YAML reads an unquoted 2024-06-01 as a date; keep it as the ISO string.
        return value.isoformat() if isinstance(value, date) else value


class ChurnSettings(_Frozen):
    # auto: contract when the data hold subscriptions, inactivity when they do not
    # (churnlens.features.shapes.resolve_churn makes it concrete for a loaded source).
    definition: Literal["auto", "contract", "inactivity"] = "auto"
    grace_days: int = Field(14, ge=0, le=365)
    inactivity_days: int = Field(60, ge=1, le=730)
    activity: Literal["purchases", "any"] = "purchases"


class CutoffSettings(_Frozen):
    frequency: Literal["month", "week"] = "month"
    min_history_days: int = Field(0, ge=0)
    dates: tuple[date, ...] = ()

    @field_validator("dates", mode="after")
    @classmethod
    def _sorted_once(cls, value: tuple[date, ...]) -> tuple[date, ...]:
        repeated = sorted({d for d in value if value.count(d) > 1})
        if repeated:
            raise ValueError(f"dates must not repeat a date ({', '.join(map(str, repeated))})")
        return tuple(sorted(value))


class LtvSettings(_Frozen):
    horizon_days: int = Field(365, ge=1, le=3650)
    annual_discount_rate: float = Field(0.10, ge=0.0, lt=1.0)
    currency: str = Field("USD", min_length=3, max_length=3)


class FeatureSettings(_Frozen):
    windows: tuple[int, ...] = (7, 30, 90)
    value_event: str = "report_created"
    onboarding_days: int = Field(90, ge=1)
    renewal_window_days: int = Field(60, ge=1)
    # Event types with features of their own: the most frequent ones, at most this many,
    # each holding at least this share of all events (chosen at training time).
    event_types_max: int = Field(10, ge=0, le=64)
    event_types_min_share: float = Field(0.02, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_windows(self) -> FeatureSettings:
        if not self.windows or any(w < 1 for w in self.windows):
            raise ValueError("windows must be a non-empty list of positive day counts")
        if 30 not in self.windows:
            raise ValueError("windows must include 30 (trend features compare 30-day windows)")
        if len(set(self.windows)) != len(self.windows):
            raise ValueError("windows must not repeat a value")
        return self

    @property
    def max_window(self) -> int:
        return max(max(self.windows), 60)


class LightGBMSettings(_Frozen):
    n_estimators: int = Field(400, ge=1, le=10_000)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(7, ge=2, le=1024)
    max_depth: int = Field(3, ge=-1, le=64)
    min_child_samples: int = Field(50, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: int = Field(40, ge=1)


class TrainingSettings(_Frozen):
    seed: int = 42
    test_cutoffs: int = Field(2, ge=1)
    validation_cutoffs: int = Field(2, ge=1)
    calibration_cutoffs: int = Field(2, ge=1)
    lightgbm: LightGBMSettings = LightGBMSettings()


class TierSettings(_Frozen):
    medium: float = Field(0.10, gt=0, lt=1)
    high: float = Field(0.25, gt=0, lt=1)
    critical: float = Field(0.50, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_order(self) -> TierSettings:
        if not self.medium < self.high < self.critical:
            raise ValueError("tier thresholds must rise: medium < high < critical")
        return self

    def tier(self, probability: float) -> str:
        """The tier name for one churn probability."""
        for name in ("critical", "high", "medium"):
            if probability >= getattr(self, name):
                return name
        return "low"


DRIVER_GROUPS = ("onboarding", "usage", "support", "billing", "sentiment", "contract", "account",
                 "revenue")


class DriverSettings(_Frozen):
    top_n: int = Field(3, ge=1, le=20)


class PlaybookSettings(_Frozen):
    onboarding: str = "Book an onboarding call to reach first value"
    usage: str = "Run an adoption review of the features they use"
    support: str = "Escalate open support tickets to a senior engineer"
    billing: str = "Reach out about the failed payment and update billing details"
    sentiment: str = "Engage an executive sponsor to address satisfaction"
    contract: str = "Prepare the renewal with a value summary"
    account: str = "Review the account plan with the account owner"
    revenue: str = "Reach out with an offer that fits what they used to buy"


class MlflowSettings(_Frozen):
    tracking_uri: str | None = None
    experiment: str = "churnlens"
    model_name: str = "churnlens"


class PathSettings(_Frozen):
    work_dir: Path = Path("work")
    models_dir: Path = Path("models")


class ServingSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    max_page_size: int = Field(1000, ge=1, le=100_000)


class SparkBatchSettings(_Frozen):
    # Where the Spark job stages the validated sources and its checkpoints: a folder every
    # executor can reach (hdfs://, s3a://, a shared mount); None: OUT.staging beside OUT.
    staging: str | None = None


class BatchSettings(_Frozen):
    chunk_size: int = Field(50_000, ge=100)
    psi_threshold: float = Field(0.2, gt=0)
    spark: SparkBatchSettings = SparkBatchSettings()


class Settings(_Frozen):
    """Everything in params.yaml."""

    data: DataSettings = DataSettings()
    churn: ChurnSettings = ChurnSettings()
    cutoffs: CutoffSettings = CutoffSettings()
    horizon_days: int = Field(90, ge=1, le=730)
    ltv: LtvSettings = LtvSettings()
    features: FeatureSettings = FeatureSettings()
    training: TrainingSettings = TrainingSettings()
    tiers: TierSettings = TierSettings()
    drivers: DriverSettings = DriverSettings()
    playbooks: PlaybookSettings = PlaybookSettings()
    mlflow: MlflowSettings = MlflowSettings()
    paths: PathSettings = PathSettings()
    serving: ServingSettings = ServingSettings()
    batch: BatchSettings = BatchSettings()


class _DuplicateKey(yaml.YAMLError):
    """A mapping in the settings file names one key twice."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (PyYAML silently keeps the last)."""


def _mapping_once(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _value in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(f"key {key!r} appears twice (lines {seen[key]} and {line}); "
                                "keep one of them")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def parse_settings(raw: dict, origin: str = "params.yaml") -> Settings:
    """Validate a dict shaped like params.yaml.

    Raises SettingsError naming every bad key as a dotted path (``training.lightgbm.num_leaves``):
    one line for one bad key, a count and a line per key for several.
    """
    try:
        return Settings.model_validate(raw or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown key; remove it or fix its spelling")
            else:
                lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        if len(lines) == 1:
            raise SettingsError(f"{origin}: {lines[0]}") from None
        raise SettingsError(f"{origin} has {len(lines)} bad settings:\n"
                            + "\n".join(f"  {line}" for line in lines)) from None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate a settings file; relative paths inside stay relative to the working dir.

    path: the file to read. None: `params.yaml` in the working directory when there is one,
    else the built-in defaults (the shipped template's values). Raises SettingsError when an
    explicit path does not exist, is not YAML or not a mapping, names a key twice, or holds a
    bad setting (a boolean or quoted text where a number belongs is one).
    """
    if path is None:
        if not Path(TEMPLATE_NAME).is_file():
            return Settings()
        path = TEMPLATE_NAME
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"settings file {path} not found; pass --params PATH, or write one "
                            "with `churnlens init`")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise SettingsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        # One line: PyYAML's own message spans four, with context marks.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError(f"{path} is not valid YAML{where}: {problem}") from None
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{path} must hold a mapping of settings, not {type(raw).__name__}")
    return parse_settings(raw or {}, origin=str(path))


def template_text() -> str:
    """The commented params.yaml shipped inside the package (what `churnlens init` writes)."""
    return files("churnlens").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
