"""churnlens.settings: params.yaml is read strictly, into a frozen settings object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from churnlens.settings import (
    Settings,
    SettingsError,
    TierSettings,
    load_settings,
    parse_settings,
    template_text,
)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """{dotted.key: value} for every scalar or list in a nested mapping."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def edited_params(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the project's params.yaml with one line changed."""
    text = PARAMS.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in params.yaml"
    return write_params(tmp_path, text.replace(old, new))


def test_project_params_load():
    settings = load_settings(PARAMS)
    raw = yaml.safe_load(PARAMS.read_text())
    dumped = leaves(settings.model_dump(mode="json"))
    for key, value in leaves(raw).items():
        assert dumped[key] == value, key
    assert settings.training.lightgbm.num_leaves == raw["training"]["lightgbm"]["num_leaves"]
    assert settings.data.source == Path(raw["data"]["source"])
    assert settings.features.windows == tuple(raw["features"]["windows"])


def test_built_in_defaults_are_the_shipped_params():
    # Without a settings file churnlens must behave exactly as with the shipped one.
    assert Settings() == load_settings(PARAMS)
    assert leaves(Settings().model_dump(mode="json")) == leaves(
        load_settings(PARAMS).model_dump(mode="json"))


def test_packaged_template_is_the_repository_params():
    # `churnlens init` writes the template inside the package; it must not drift from the
    # params.yaml the repository documents (fix: cp params.yaml churnlens/params.yaml).
    assert template_text() == PARAMS.read_text()
    assert "#" in template_text()  # the commented file, not a bare dump


def test_no_file_in_the_working_directory_means_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings() == Settings()
    write_params(tmp_path, "horizon_days: 30\n")
    assert load_settings().horizon_days == 30


def test_empty_file_gives_the_defaults(tmp_path):
    settings = load_settings(write_params(tmp_path, "# nothing set\n"))
    assert settings == parse_settings({})
    assert settings.horizon_days == 90
    assert settings.churn.definition == "auto"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("horizon_days: 90", "horizon_dayz: 90", "horizon_dayz"),
        ("    num_leaves: 7", "    num_leafs: 7", "training.lightgbm.num_leafs"),
        ("  currency: USD", "  currency: USD\n  curency: EUR", "ltv.curency"),
    ],
)
def test_unknown_key_is_named(tmp_path, old, new, key):
    path = edited_params(tmp_path, old, new)
    with pytest.raises(
        SettingsError,
        match=rf"^{re.escape(str(path))}: {re.escape(key)}: "
        r"unknown key; remove it or fix its spelling$",
    ):
        load_settings(path)


@pytest.mark.parametrize(
    ("old", "new", "key", "detail"),
    [
        ("horizon_days: 90", "horizon_days: -1", "horizon_days",
         r"greater than or equal to 1 \(got -1\)"),
        ("  high: 0.25", "  high: 0.05", "tiers", r"medium < high < critical"),
        ("  definition: auto  ", "  definition: foo  ", "churn.definition",
         r"'auto', 'contract' or 'inactivity' \(got 'foo'\)"),
        ("  dates: []", "  dates: [2026-10-01, 2026-10-01]", "cutoffs.dates",
         r"must not repeat a date \(2026-10-01\)"),
        ("  windows: [7, 30, 90]", "  windows: [7, 14]", "features", r"windows must include 30"),
        ("  port: 3000", "  port: http", "serving.port", r"valid integer"),
        ("    learning_rate: 0.05", "    learning_rate: 0", "training.lightgbm.learning_rate",
         r"greater than 0"),
    ],
)
def test_bad_value_names_the_key(tmp_path, old, new, key, detail):
    path = edited_params(tmp_path, old, new)
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(path))}: {re.escape(key)}: .*{detail}"):
        load_settings(path)


def test_every_bad_key_is_reported():
    with pytest.raises(
        SettingsError,
        match=r"(?m)^test has 2 bad settings:\n"
        r"(?=(?s:.*)^  horizon_days: .*\(got 0\)$)(?=(?s:.*)^  churn\.grace_days: .*\(got -3\)$)",
    ):
        parse_settings({"horizon_days": 0, "churn": {"grace_days": -3}}, origin="test")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(
        SettingsError, match=rf"settings file {re.escape(str(missing))} not found; pass --params PATH, or write one with `churnlens init`"
    ):
        load_settings(missing)


def test_invalid_yaml(tmp_path):
    path = write_params(tmp_path, "horizon_days: [90\nchurn:\n  definition: contract\n")
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(path))} is not valid YAML at line 2, column 6: expected ',' or '\]', but got ':'$"):
        load_settings(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write_params(tmp_path, "- horizon_days\n- 90\n")
    with pytest.raises(SettingsError, match=r"must hold a mapping of settings, not list"):
        load_settings(path)


def test_unquoted_observed_until_date_is_kept_as_iso_string(tmp_path):
    # YAML reads 2024-06-01 as a date, which is what people write in params.yaml.
    path = edited_params(tmp_path, "  observed_until: null", "  observed_until: 2024-06-01")
    assert load_settings(path).data.observed_until == "2024-06-01"
    assert parse_settings({"data": {"observed_until": "2024-06-01"}}).data.observed_until == (
        "2024-06-01"
    )


def test_settings_are_frozen():
    settings = load_settings(PARAMS)
    with pytest.raises(ValidationError, match=r"frozen"):
        settings.horizon_days = 30
    with pytest.raises(ValidationError, match=r"frozen"):
        settings.training.lightgbm.num_leaves = 99
    with pytest.raises(ValidationError, match=r"frozen"):
        settings.tiers.high = 0.3
    assert settings.horizon_days == 90
    assert settings.training.lightgbm.num_leaves == 7
    assert settings.tiers.high == 0.25


@pytest.mark.parametrize(
    ("probability", "tier"),
    [
        (0.0, "low"),
        (0.0999, "low"),
        (0.10, "medium"),
        (0.2499, "medium"),
        (0.25, "high"),
        (0.4999, "high"),
        (0.50, "critical"),
        (1.0, "critical"),
    ],
)
def test_tier_boundaries(probability, tier):
    assert TierSettings().tier(probability) == tier
    assert load_settings(PARAMS).tiers.tier(probability) == tier


def test_tier_uses_configured_thresholds():
    tiers = TierSettings(medium=0.2, high=0.4, critical=0.8)
    assert [tiers.tier(p) for p in (0.19, 0.2, 0.39, 0.4, 0.79, 0.8)] == [
        "low", "medium", "medium", "high", "high", "critical"
    ]


# --- to the letter: duplicate keys, booleans and quoted numbers -----------------------------


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("horizon_days: 60\nhorizon_days: 90\n", "horizon_days", "1 and 2"),
    ("churn:\n  grace_days: 7\n  definition: auto\n  grace_days: 0\n", "grace_days", "2 and 4"),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, key, lines):
    path = write_params(tmp_path, text)
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(path))}: key '{key}' appears "
                       rf"twice \(lines {lines}\); keep one of them$"):
        load_settings(path)


def test_a_merge_key_may_be_overridden(tmp_path):
    path = write_params(tmp_path, "ltv: &base {horizon_days: 180, currency: EUR}\n"
                        "tiers: {medium: 0.1}\n")
    assert load_settings(path).ltv.horizon_days == 180
    merged = write_params(tmp_path, "x: &base {grace_days: 3}\nchurn: {<<: *base, "
                          "grace_days: 5}\n")
    with pytest.raises(SettingsError, match=r"x: unknown key"):
        load_settings(merged)  # the merge itself parsed; only the anchor's key is unknown


@pytest.mark.parametrize(("text", "key"), [
    ("horizon_days: true\n", "horizon_days"),
    ("ltv: {annual_discount_rate: on}\n", "ltv.annual_discount_rate"),
    ("features: {windows: [7, 30, yes]}\n", "features.windows"),
    ("features: {value_event: no}\n", "features.value_event"),
])
def test_a_boolean_is_not_a_number_or_a_name(tmp_path, text, key):
    path = write_params(tmp_path, text)
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(path))}: {re.escape(key)}: .*a "
                       r"boolean \(YAML reads true/false/yes/no/on/off as one\) is not a valid "
                       r"value here"):
        load_settings(path)


def test_a_quoted_number_is_text(tmp_path):
    path = write_params(tmp_path, 'horizon_days: "90"\n')
    with pytest.raises(SettingsError, match=r"horizon_days: .*a quoted number is text; write "
                       r"the number without quotes \(got '90'\)"):
        load_settings(path)
    assert load_settings(write_params(tmp_path, "ltv: {currency: '123'}\n")).ltv.currency == "123"
