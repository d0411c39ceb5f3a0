"""The trained model as one object: feature spec, risk, survival, LTV and explainer.

A `ChurnModel` is what training logs to MLflow (inside the pyfunc) and what serving and the
batch scorer load. It carries the settings it was trained with that scoring needs (horizon,
tiers, playbooks, LTV), so scoring never reads params.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.settings import LtvSettings, PlaybookSettings, TierSettings
from churnlens.training.ltv_models import LtvCandidate, SurvivalRevenue
from churnlens.training.risk import RiskModel
from churnlens.training.survival import SurvivalModel


@dataclass
class ChurnModel:
    """Everything needed to turn feature rows into score records."""

    features: list[Feature]
    risk: RiskModel
    survival: SurvivalModel
    horizon_days: int
    ltv: LtvSettings
    tiers: TierSettings
    playbooks: PlaybookSettings
    top_n: int
    info: dict = field(default_factory=dict)  # name, version, run_id, metrics, trained_at
    reference: dict = field(default_factory=dict)  # training distributions, for drift checks
    # The LTV model the run kept (`churnlens.training.ltv_selection`); None: survival x rate.
    ltv_model: LtvCandidate | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def currency(self) -> str:
        return self.ltv.currency

    @property
    def info_ref(self) -> dict:
        """The model reference carried by every score record."""
        return {k: self.info.get(k) for k in ("name", "version", "run_id")}

    @property
    def ltv_estimator(self) -> LtvCandidate:
        """The fitted LTV model: the one kept in training, else survival x revenue rate."""
        if self.ltv_model is not None:
            return self.ltv_model
        return SurvivalRevenue(self.survival, self.ltv.horizon_days,
                               self.ltv.annual_discount_rate).fit()

    def expected_ltv(self, frame: pd.DataFrame, monthly_survival: np.ndarray | None = None
                     ) -> np.ndarray:
        """Expected discounted revenue over the LTV horizon for each row, from the LTV model.

        monthly_survival: the survival curve at `monthly_grid(ltv.horizon_days)` when the
        caller has it (survival x rate then reuses it).
        """
        return self.ltv_estimator.predict(frame, monthly_survival=monthly_survival)

    def tiers_of(self, probabilities: np.ndarray) -> np.ndarray:
        """Risk tier names for churn probabilities, from the thresholds in params.yaml."""
        from churnlens.training.drivers import risk_tier

        return risk_tier(probabilities, self.tiers)
