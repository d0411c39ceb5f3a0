"""Find the contract tables in a source folder and open them raw with Spark.

The Spark twin of `churnlens.features.reading`'s folder reader, for a folder any executor
can read: a local path, ``hdfs://``, ``s3a://``... It lists the folder with the Hadoop
FileSystem of Spark's own configuration (not ``os.listdir``), matches the entries to the
contract tables by the same rule (`reading.choose_files`: exact name first, parquet before
csv, a near miss of case or spaces said so), names the columns by the same rule
(`reading.column_names`) and registers a temp view raw_NAME per table found. Besides
NAME.parquet / NAME.csv files it reads NAME/, NAME.parquet/ and NAME.csv/ folders of part
files, as Spark and other engines write them.

CSV is read as text (header row, every column a string, RFC 4180 quotes), like the local
reader, so the same casts apply. Where Spark reads differently, the view is made to look
like DuckDB's: parquet timestamps in nanoseconds (pandas' default), which Spark cannot read
as timestamps, are read as numbers and converted back; a CSV file that is not UTF-8 (which
Spark reads with replacement characters instead of failing) is refused with the local
reader's message.
"""

from __future__ import annotations

from functools import reduce

from churnlens.features.contract import TABLES
from churnlens.features.reading import (
    DATABASE_KINDS,
    DataError,
    Entry,
    choose_files,
    column_names,
    unreadable,
)
from churnlens.features.report import LoadReport

NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
REPLACEMENT = "\ufffd"  # what Spark reads in place of bytes that are not UTF-8


def spark_errors() -> tuple[type[BaseException], ...]:
    """What a failing Spark read or query raises."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JJavaError)


def _column(name: str):
    """The column NAME of a frame, whatever its characters (dots, spaces, backticks)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def join(folder: str, name: str) -> str:
    """NAME inside FOLDER (a path or a URI), as the messages show it."""
    return f"{folder.rstrip('/')}/{name}"


def list_folder(spark, source: str) -> list[Entry]:
    """The entries of folder SOURCE, listed by the Hadoop FileSystem SOURCE names.

    Raises DataError when SOURCE does not exist or is not a folder.
    """
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(source)
    try:
        fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        status = fs.getFileStatus(path) if fs.exists(path) else None
        listed = fs.listStatus(path) if status is not None and status.isDirectory() else None
    except spark_errors() as exc:
        raise DataError(f"data source {source} cannot be listed: "
                        f"{str(exc).strip().splitlines()[0]}; check the path and that Spark "
                        "has access to it") from None
    if listed is None:
        hint = (" (a DuckDB database: use the local engine)"
                if source.lower().endswith(DATABASE_KINDS) and status is not None else "")
        raise DataError(
            f"data source {source} not found{hint}: the spark engine reads a folder of "
            "NAME.parquet / NAME.csv files (or NAME/ folders of parquet parts) at a path "
            "every executor can read (a local folder, hdfs://, s3a://); set data.source in "
            "params.yaml")
    return [Entry(item.getPath().getName(), item.isDirectory(), item.getLen())
            for item in listed]


def register_raw_spark(spark, source: str, report: LoadReport) -> dict[str, str]:
    """A temp view raw_NAME for each contract table found in the folder SOURCE.

    Returns {table: the path it was read from}; fills REPORT.unread and REPORT.renamed.
    Raises DataError for a missing source, an unreadable file or ambiguous names.
    """
    entries = list_folder(spark, source)
    # Spark cannot read nanosecond timestamps (pandas' default) as timestamps: as numbers,
    # converted back below. The setting is read when a query runs, so it stays on.
    spark.conf.set(NANOS_AS_LONG, "true")
    found = {}
    for name, entry in choose_files(entries, source, report, datasets=True).items():
        path = join(source, entry.name)
        if not entry.is_dir and entry.size == 0:
            raise DataError(f"file {path} is empty (0 bytes): it was probably cut off while "
                            f"being written or copied; export table {name} again")
        frame = _read(spark, path, entry)
        frame = frame.toDF(*column_names(name, frame.columns, report))
        frame.createOrReplaceTempView(f"raw_{name}")
        found[name] = path
    return found


def _read(spark, path: str, entry: Entry):
    """The raw frame at PATH (ENTRY: its listing), typed as DuckDB would read it."""
    errors = spark_errors()
    is_csv = entry.suffix.lower() == ".csv"
    try:
        if is_csv:
            # Parsed once and kept by the executors, as the local reader keeps a CSV in a
            # table: every check would parse the text again otherwise.
            frame = (spark.read.option("header", "true").option("inferSchema", "false")
                     .option("escape", '"').option("mode", "FAILFAST").csv(path).persist())
            _check_utf8(frame, path)
            return frame
        return _nanos_as_timestamps(spark.read.parquet(path), entry)
    except errors as exc:
        raise unreadable(path, exc, "Spark") from None


def _nanos_as_timestamps(frame, entry: Entry):
    """FRAME (read with nanosecond timestamps as numbers) with the contract's timestamp
    columns back as timestamps, truncated to microseconds as DuckDB casts them. A contract
    timestamp column of integers is taken as such nanoseconds (DuckDB refuses integers
    there: such data fail either way, with another message)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    table = entry.stem.strip().lower()
    wanted = ({c.name for c in TABLES[table].columns if c.kind == "timestamp"}
              if table in TABLES else set())
    columns = []
    for field in frame.schema.fields:
        column = _column(field.name)
        if isinstance(field.dataType, LongType) and field.name.strip().lower() in wanted:
            # Integer division (`/` would go through a double and lose nanoseconds), floored.
            ident = "`" + field.name.replace("`", "``") + "`"
            column = F.expr(f"timestamp_micros(({ident} - pmod({ident}, 1000)) div 1000)"
                            ).cast("timestamp_ntz")
        columns.append(column.alias(field.name))
    return frame.select(*columns)


def _check_utf8(frame, path: str) -> None:
    """DataError (the local reader's) when the CSV at PATH holds bytes that are not UTF-8."""
    from pyspark.sql import functions as F

    if any(REPLACEMENT in name for name in frame.columns):
        bad = True
    else:
        holds = [F.instr(_column(name), REPLACEMENT) > 0 for name in frame.columns]
        bad = bool(holds) and bool(frame.where(reduce(lambda a, b: a | b, holds)).limit(1).count())
    if bad:
        raise unreadable(path, UnicodeError("invalid utf-8: the file holds bytes Spark reads "
                                            "as replacement characters"), "Spark")
