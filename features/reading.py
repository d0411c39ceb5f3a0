"""Find the contract tables in a data source and open them raw, as a person would name them.

A folder's files and a database's tables are matched to the contract tables by name: the
exact name first, else a name that differs only in case or surrounding spaces
(``Tickets.parquet`` is tickets), said so in the load report; two such near misses for one
table are refused with both named. Columns are matched the same way (``Ended_At`` is
ended_at). Everything in the source that is not read is listed in the report with why.

A file that cannot be read (empty, truncated, not the format its name says, not UTF-8)
raises `DataError` naming the file and the likely cause. Paths and names only ever reach
SQL as quoted literals or identifiers (`sql_string`, `quote_ident`), never as SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import duckdb

from churnlens.features.contract import TABLES
from churnlens.features.known import sql_string
from churnlens.features.report import LoadReport

FILE_KINDS = (".parquet", ".csv")  # in order of preference for one table
DATABASE_KINDS = (".duckdb", ".db")


class DataError(ValueError):
    """The input data break the contract; the message says where and how to fix it."""


def quote_ident(name: str) -> str:
    """NAME as a quoted SQL identifier (a double quote inside is doubled)."""
    return '"' + name.replace('"', '""') + '"'


def normalised(name: str) -> str:
    """How a person compares names: without surrounding spaces, in any case."""
    return name.strip().lower()


def match_name(wanted: str, available: list[str], what: str) -> tuple[str | None, bool]:
    """The one of AVAILABLE that names WANTED: (name, True when only a near miss).

    Exact first; else the single name equal to WANTED but for case and surrounding spaces.
    Raises DataError naming them when several near misses qualify. WHAT names the place in
    the message (e.g. "table events: columns").
    """
    if wanted in available:
        return wanted, False
    near = [name for name in available if normalised(name) == wanted]
    if len(near) > 1:
        raise DataError(f"{what} {', '.join(repr(n) for n in near)} all differ from {wanted} "
                        "only in case or spaces; rename the one to use to "
                        f"{wanted} (or remove the others)")
    return (near[0], True) if near else (None, False)


def register_raw(con: duckdb.DuckDBPyConnection, source, report: LoadReport) -> dict[str, str]:
    """Create a view raw_NAME for each contract table found in SOURCE.

    Returns {table: where it was read (a file, a database table, "frame NAME")}.
    SOURCE: {name: DataFrame}, a folder of NAME.parquet / NAME.csv, or a .duckdb file.
    Fills REPORT.unread (what was not read) and REPORT.renamed (near-miss names used).
    Raises DataError for a missing source, an unreadable file or ambiguous names.
    """
    if isinstance(source, dict):
        found, given = {}, [key for key, frame in source.items() if frame is not None]
        for name in TABLES:
            key, near = match_name(name, given, "frames")
            if key is None:
                continue
            con.register(f"src_{name}", source[key])
            found[name] = f"frame {key!r}"
            if near:
                report.renamed.setdefault(name, []).append(
                    f"read from frame {key!r} (its name differs from {name} only in case or "
                    "spaces)")
        used = {where.removeprefix("frame ") for where in found.values()}
        report.unread += [f"frame {key!r} (not a contract table)" for key in given
                          if repr(key) not in used]
    else:
        path = Path(source)
        if path.is_file() and path.suffix.lower() in DATABASE_KINDS:
            found = _register_database(con, path, report)
        elif path.is_dir():
            found = _register_folder(con, path, report)
        else:
            raise DataError(
                f"data source {path} not found: give a folder of NAME.parquet / NAME.csv files "
                "or a .duckdb file (set data.source in params.yaml, or run `churnlens "
                "sample-data`)")
    for name in found:
        _name_columns(con, name, report)
    return found


@dataclass(frozen=True)
class Entry:
    """One entry of a source folder: its name, whether it is a folder, its size in bytes."""

    name: str
    is_dir: bool = False
    size: int = 0

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix


def choose_files(entries: list[Entry], folder: str, report: LoadReport, *,
                 datasets: bool = False) -> dict[str, Entry]:
    """The entry of ENTRIES (a folder's) read for each contract table found, by name.

    The exact name first, parquet before csv; a near miss (case, spaces) only when no exact
    one. DATASETS: a folder NAME/ (parquet) or NAME.parquet/ / NAME.csv/ (part files, as
    Spark writes them) is read like a file; otherwise folders are not read. Fills
    REPORT.renamed and REPORT.unread; DataError when two entries name one table equally.
    """
    entries = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    files = [e for e in entries if e.suffix.lower() in FILE_KINDS and (datasets or not e.is_dir)]
    files += [e for e in entries if datasets and e.is_dir and not e.suffix]
    found, used = {}, set()
    for name in TABLES:
        candidates = [e for e in files if normalised(e.stem) == name]
        if not candidates:
            continue
        exact = [e for e in candidates if e.stem == name and e.suffix == e.suffix.lower()]
        pool = exact or candidates
        best_kind = min(_kind_rank(e) for e in pool)
        best = [e for e in pool if _kind_rank(e) == best_kind]
        if len(best) > 1:
            raise DataError(f"files {', '.join(e.name for e in best)} in {folder} all name "
                            f"table {name} (they differ only in case or spaces); keep one")
        chosen = best[0]
        found[name] = chosen
        if chosen not in exact:
            report.renamed.setdefault(name, []).append(
                f"read from {chosen.name} (its name differs from {name} only in case or "
                "spaces)")
        report.unread += [f"{e.name} ({name} was read from {chosen.name})"
                          for e in candidates if e != chosen]
        used.update(candidates)
    for entry in entries:
        if entry in used:
            continue
        why = ("a folder" if entry.is_dir and (entry not in files or not entry.suffix)
               else "not a contract table" if entry in files
               else "not a .parquet or .csv file")
        report.unread.append(f"{entry.name} ({why})")
    return found


def _kind_rank(entry: Entry) -> int:
    """Parquet before csv; a dataset folder without a suffix holds parquet."""
    return FILE_KINDS.index(entry.suffix.lower() or ".parquet")


def _register_folder(con, folder: Path, report: LoadReport) -> dict[str, str]:
    entries = [Entry(p.name, p.is_dir(), p.stat().st_size if p.is_file() else 0)
               for p in folder.iterdir()]
    found = {}
    for name, entry in choose_files(entries, str(folder), report).items():
        _read_file(con, name, folder / entry.name)
        found[name] = str(folder / entry.name)
    return found


def _read_file(con, name: str, path: Path) -> None:
    """The view src_NAME over PATH; DataError naming the file when it cannot be read."""
    if path.stat().st_size == 0:
        raise DataError(f"file {path} is empty (0 bytes): it was probably cut off while being "
                        f"written or copied; export table {name} again")
    literal = sql_string(str(path))
    try:
        if path.suffix.lower() == ".parquet":
            con.execute(f"CREATE VIEW src_{name} AS SELECT * FROM read_parquet({literal})")
        else:
            # CSV is parsed once into a table: re-parsing it for every query would be slow.
            con.execute(f"CREATE TABLE src_{name} AS SELECT * FROM "
                        f"read_csv({literal}, all_varchar = true)")
    except duckdb.Error as exc:
        raise unreadable(path, exc) from None


def unreadable(path: Path | str, exc: BaseException, engine: str = "DuckDB") -> DataError:
    """The DataError for a file ENGINE could not read (EXC): the file, the likely cause, the fix."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text, where = str(exc).lower(), str(path).lower()
    if "no space left" in text:
        return DataError(f"reading {path} filled the disk ({engine} spills large tables to "
                         "its temporary folder); free some space and run again "
                         f"({engine}: {detail})")
    if "unicode" in text or "utf-8" in text or "utf8" in text:
        cause = "it is not UTF-8 text; save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    elif where.endswith(".csv"):
        cause = "it is not a well-formed CSV file; check its quoting and delimiters"
    elif where.endswith(".parquet"):
        cause = ("it is truncated or not a parquet file (e.g. cut off while being copied); "
                 "export it again")
    else:
        cause = "its data do not read; export it again"
    return DataError(f"{'' if where.startswith(('frame', 'table')) else 'file '}{path} cannot "
                     f"be read: {cause} ({engine}: {detail})")


def _register_database(con, path: Path, report: LoadReport) -> dict[str, str]:
    if path.stat().st_size == 0:
        raise DataError(f"database file {path} is empty (0 bytes): it was probably cut off "
                        "while being written or copied; export it again")
    try:
        con.execute(f"ATTACH {sql_string(str(path))} AS src (READ_ONLY)")
    except duckdb.Error as exc:
        raise DataError(f"file {path} cannot be opened as a DuckDB database: it is truncated, "
                        f"from another program or another DuckDB version; export it again "
                        f"(DuckDB: {str(exc).splitlines()[0]})") from None
    present = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_catalog = 'src' ORDER BY table_schema, table_name").fetchall()
    names = [table for _schema, table in present]
    schema_of = dict((table, schema) for schema, table in present)
    found, used = {}, set()
    for name in TABLES:
        table, near = match_name(name, names, f"database {path}: tables")
        if table is None:
            continue
        con.execute(f"CREATE VIEW src_{name} AS SELECT * FROM src.{quote_ident(schema_of[table])}"
                    f".{quote_ident(table)}")
        found[name] = f"table {table!r} of {path}"
        used.add(table)
        if near:
            report.renamed.setdefault(name, []).append(
                f"read from database table {table!r} (its name differs from {name} only in "
                "case or spaces)")
    report.unread += [f"database table {t!r} (not a contract table)" for t in names
                      if t not in used]
    return found


def column_names(name: str, columns: list[str], report: LoadReport) -> list[str]:
    """The names COLUMNS (of table NAME, in order) are read as: a near miss of a contract
    column's name (case, spaces) as the contract's, said so in REPORT; DataError when
    several near misses name one column."""
    final = {column: column for column in columns}
    for column in TABLES[name].columns:
        actual, near = match_name(column.name, columns, f"table {name}: columns")
        if near:
            final[actual] = column.name
            report.renamed.setdefault(name, []).append(
                f"read column {actual!r} as {column.name} (the names differ only in case or "
                "spaces)")
    return list(final.values())


def _name_columns(con, name: str, report: LoadReport) -> None:
    """The view raw_NAME over src_NAME with near-miss column names read as the contract's."""
    columns = [row[0] for row in con.execute(f"DESCRIBE src_{name}").fetchall()]
    final = column_names(name, columns, report)
    if final == columns:
        con.execute(f"CREATE VIEW raw_{name} AS SELECT * FROM src_{name}")
        return
    # DuckDB keeps a column's first spelling when an alias differs from it only in case
    # (identifiers are case-insensitive), so the names go through positional ones.
    staged = ", ".join(f"{quote_ident(old)} AS c{i}" for i, old in enumerate(columns))
    named = ", ".join(f"c{i} AS {quote_ident(new)}" for i, new in enumerate(final))
    con.execute(f"CREATE VIEW raw_{name} AS SELECT {named} FROM (SELECT {staged} "
                f"FROM src_{name}) AS staged")
