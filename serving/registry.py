"""A registry URI resolved to its version in milliseconds: SQLite read directly, a
tracking server asked through MLflow's REST API.

`churnlens serve` resolves ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) on every
start, because an alias may have moved. Through MLflow that costs about 9 s of CPU on this
machine before the first answer (importing MLflow ~6 s, opening its SQLAlchemy store ~3 s),
which is most of a start whose model file is already in the local cache, and all of a
start that must only say "version 99 does not exist". For a ``sqlite:`` tracking store the
same answer is two indexed lookups with Python's own sqlite3, read-only.

The tables read are MLflow's registry tables (``model_versions``,
``registered_model_aliases``), with MLflow's own conditions (a version soft-deleted as
``Deleted_Internal`` does not exist; the ``default`` workspace). Anything this module does
not recognise (another store, a schema without those tables or columns, a workspace set
with MLFLOW_WORKSPACE) returns None, and the caller asks MLflow as before.

A tracking server (``http://``, ``https://``) is asked the same two questions through
MLflow's documented REST API (``model-versions/get``, ``registered-models/alias``) with
the standard library, so a server that does not answer is reported after the registry
timeout, not after MLflow's import (a minute on a busy machine). Only the token and basic
authentication MLflow reads from the environment are sent; with TLS settings of MLflow's
own (custom certificates, insecure TLS) the lookup is left to MLflow. A version whose
artifacts are a local folder (``storage_location`` ``file://...``, the default beside a
SQLite store) is read from that folder as MLflow's local artifact repository would copy it.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlparse

DELETED = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages


class NotRegistered(LookupError):
    """The store answers, and the model or version the URI names is not in it."""


class Unreachable(ConnectionError):
    """The tracking server refused the connection or did not answer in time."""

    def __init__(self, reason: str, silent: bool):
        super().__init__(reason)
        self.silent = silent  # True: connected, then no answer within the timeout


TLS_SETTINGS = ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                "MLFLOW_TRACKING_CLIENT_CERT_PATH")


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    run_id: str | None
    storage_location: str | None = None  # where the version's artifacts are

    def local_folder(self) -> Path | None:
        """The version's artifacts as a local folder, or None (another artifact store)."""
        where = self.storage_location or ""
        if not where.startswith("file://"):
            return None
        folder = Path(unquote(urlparse(where).path))
        return folder if folder.is_dir() else None


def sqlite_path(store: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (SQLAlchemy's rules: three
    slashes and a relative path, four for an absolute one), or None for any other store."""
    if not store.startswith("sqlite:///"):
        return None
    path = store.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI."""
    name, _, tail = uri.removeprefix("models:/").rstrip("/").partition("/")
    name, _, alias = name.partition("@")
    return name, (tail or None), (alias or None)


def resolve_local(uri: str, store: str) -> Resolved | None:
    """URI's version in the SQLite store STORE, or None when this module cannot tell.

    Raises NotRegistered (with MLflow's own wording of what is missing) when the store holds
    no such model, version or alias.
    """
    path = sqlite_path(store)
    if (path is None or not uri.startswith("models:/") or os.environ.get("MLFLOW_WORKSPACE")
            or not path.is_file()):
        return None
    name, version, alias = parse(uri)
    if not name or bool(version) == bool(alias) or (version and not version.isdigit()):
        return None  # a malformed URI: MLflow's message is the one to show
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                              timeout=2)
    except sqlite3.Error:
        return None
    try:
        location = _location_column(con)
        if location is None:
            return None
        if alias:
            found = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? "
                                "AND alias = ? AND workspace = 'default'",
                                (name, alias)).fetchone()
            if found is None:
                raise NotRegistered(f"Registered model alias {alias} not found.")
            version = str(found[0])
        row = con.execute(f"SELECT version, run_id, {location} FROM model_versions "
                          "WHERE name = ? AND "
                          "version = ? AND current_stage IS NOT ? AND workspace = 'default'",
                          (name, int(version), DELETED)).fetchone()
    except sqlite3.Error:  # locked past the timeout, or a schema this module misread
        return None
    finally:
        con.close()
    if row is None:
        raise NotRegistered(f"Model Version (name={name}, version={version}) not found")
    return Resolved(name, str(row[0]), row[1], row[2])


def _location_column(con: sqlite3.Connection) -> str | None:
    """What to select for a version's artifacts: storage_location where the schema has
    it (MLflow 3), else NULL; None when CON lacks MLflow's registry tables or the columns
    read here (each table's columns are read once)."""
    wanted = {"model_versions": {"name", "version", "run_id", "current_stage", "workspace"},
              "registered_model_aliases": {"name", "alias", "version", "workspace"}}
    found = {table: {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
             for table in wanted}
    if any(not columns <= found[table] for table, columns in wanted.items()):
        return None
    return "storage_location" if "storage_location" in found["model_versions"] else "NULL"


def resolve_remote(uri: str, store: str, timeout_s: float) -> Resolved | None:
    """URI's version on the tracking server STORE, asked over MLflow's REST API; None when
    this module leaves the question to MLflow (not a registry URI, TLS settings of MLflow's
    own, an answer it does not recognise). Raises NotRegistered with the server's message,
    or Unreachable when the server refuses or stays silent for TIMEOUT_S."""
    if (not store.startswith(("http://", "https://")) or not uri.startswith("models:/")
            or any(os.environ.get(k) for k in TLS_SETTINGS)):
        return None
    name, version, alias = parse(uri)
    if not name or bool(version) == bool(alias):
        return None
    path, query = (("registered-models/alias", {"name": name, "alias": alias}) if alias
                   else ("model-versions/get", {"name": name, "version": version}))
    request = urllib.request.Request(
        f"{store.rstrip('/')}/api/2.0/mlflow/{path}?{urlencode(query)}", headers=_auth())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return _refusal(exc)
    except TimeoutError as exc:
        raise Unreachable(str(exc) or "timed out", silent=True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise Unreachable(str(exc.reason) or "timed out", silent=True) from None
        raise Unreachable(str(exc.reason), silent=False) from None
    except (OSError, ValueError):
        return None
    mv = body.get("model_version") if isinstance(body, dict) else None
    if not isinstance(mv, dict) or "version" not in mv:
        return None
    return Resolved(name, str(mv["version"]), mv.get("run_id"), mv.get("storage_location"))


def _refusal(exc: urllib.error.HTTPError) -> None:
    """NotRegistered for the server's "does not exist" answer; None for any other refusal
    (authentication, a proxy's page), whose explanation MLflow's client gives best."""
    try:
        body = json.loads(exc.read())
    except (OSError, ValueError):
        return None
    if isinstance(body, dict) and body.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
        raise NotRegistered(str(body.get("message") or "not found")) from None
    return None


def _auth() -> dict[str, str]:
    """The Authorization header MLflow's client would send, from the same variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}
