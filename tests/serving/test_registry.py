"""The fast registry lookup agrees with MLflow's own client on a real SQLite store."""

from __future__ import annotations

import pytest

from churnlens.serving import registry

# A real MLflow SQLite store with registered versions: make test, not test-fast.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with versions 1-3 of `churnlens` (2 deleted), aliases on 1 and 3."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    client.create_registered_model("churnlens")
    for i in (1, 2, 3):
        folder = root / f"v{i}"
        folder.mkdir()
        client.create_model_version("churnlens", source=folder.as_uri())
    client.delete_model_version("churnlens", "2")
    client.set_registered_model_alias("churnlens", "champion", "3")
    client.set_registered_model_alias("churnlens", "old", "1")
    return uri, client, root


@pytest.mark.parametrize("uri", ["models:/churnlens@champion", "models:/churnlens@old",
                                 "models:/churnlens/1", "models:/churnlens/3"])
def test_a_registered_version_resolves_as_mlflow_does(store, uri):
    store_uri, client, _ = store
    found = registry.resolve_local(uri, store_uri)
    name, version, alias = registry.parse(uri)
    mv = (client.get_model_version_by_alias(name, alias) if alias
          else client.get_model_version(name, version))
    assert (found.name, found.version, found.run_id) == ("churnlens", str(mv.version), mv.run_id)
    assert found.local_folder() is not None and found.local_folder().name == f"v{mv.version}"


@pytest.mark.parametrize("uri, message", [
    ("models:/churnlens/2", r"Model Version \(name=churnlens, version=2\) not found"),
    ("models:/churnlens/9", r"Model Version \(name=churnlens, version=9\) not found"),
    ("models:/other/1", r"Model Version \(name=other, version=1\) not found"),
    ("models:/churnlens@nobody", r"alias nobody not found"),
])
def test_a_missing_version_or_alias_is_not_registered_for_mlflow_either(store, uri, message):
    from mlflow.exceptions import MlflowException

    store_uri, client, _ = store
    with pytest.raises(registry.NotRegistered, match=message):
        registry.resolve_local(uri, store_uri)
    name, version, alias = registry.parse(uri)
    with pytest.raises(MlflowException, match="not found"):
        (client.get_model_version_by_alias(name, alias) if alias
         else client.get_model_version(name, version))


def test_what_it_cannot_tell_is_left_to_mlflow(store, tmp_path, monkeypatch):
    store_uri, _, root = store
    assert registry.resolve_local("runs:/abc/churnlens", store_uri) is None
    assert registry.resolve_local("models:/churnlens/1", "http://127.0.0.1:5000") is None
    assert registry.resolve_local("models:/churnlens/x", store_uri) is None
    not_mlflow = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(not_mlflow).execute("CREATE TABLE model_versions (name TEXT)").connection.close()
    assert registry.resolve_local("models:/churnlens/1", f"sqlite:///{not_mlflow}") is None
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-a")
    assert registry.resolve_local("models:/churnlens/1", store_uri) is None
