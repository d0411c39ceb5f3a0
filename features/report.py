"""The load report: what a data source held, what was kept, set aside, repaired or not read.

`churnlens.features.loading.load_source` fills one `LoadReport`; `churnlens features` and
`churnlens score` print `LoadReport.lines`, `churnlens train` logs `LoadReport.brief`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

# A table whose last record is this many days or more before the end of the data is named
# as stale: its features stop short of the other tables'.
STALE_DAYS = 31


@dataclass
class LoadReport:
    """What was read, kept, set aside and ignored, per table, and what needs a look.

    set_aside: table -> {reason (names the column, the rule and a few examples): rows};
    checks: table -> lines on suspicious records (each says how many and what churnlens did);
    renamed: table -> lines on a name read as a contract name (case or spaces differ);
    last_dates: table -> its latest record time (YYYY-MM-DD), after the set-asides;
    unread: entries of the source that were not read, each with why.
    """

    source: str
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_kept: dict[str, int] = field(default_factory=dict)
    set_aside: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    defaulted_columns: dict[str, list[str]] = field(default_factory=dict)
    missing_tables: list[str] = field(default_factory=list)
    observed_until: str = ""
    end_reason: str = ""  # how the end of the data was decided
    shape: list[str] = field(default_factory=list)  # the shape and from when churn shows
    notes: list[str] = field(default_factory=list)
    checks: dict[str, list[str]] = field(default_factory=dict)
    renamed: dict[str, list[str]] = field(default_factory=dict)
    last_dates: dict[str, str] = field(default_factory=dict)
    unread: list[str] = field(default_factory=list)

    def set_aside_rows(self, table: str, reason: str, count: int) -> None:
        """Count COUNT rows of TABLE set aside for REASON (nothing when COUNT is 0)."""
        if count:
            reasons = self.set_aside.setdefault(table, {})
            reasons[reason] = reasons.get(reason, 0) + count

    def check(self, table: str, line: str) -> None:
        """Add one line on suspicious records of TABLE."""
        self.checks.setdefault(table, []).append(line)

    def stale(self, table: str) -> int | None:
        """Days from TABLE's last record to the end of the data, when that is STALE_DAYS or more."""
        if table not in self.last_dates or not self.observed_until:
            return None
        gap = (date.fromisoformat(self.observed_until)
               - date.fromisoformat(self.last_dates[table])).days
        return gap if gap >= STALE_DAYS else None

    def _table_head(self, table: str, read: int) -> str:
        head = f"{table}: {read:,} rows read, {self.rows_kept[table]:,} kept"
        if table in self.last_dates:
            head += f", last {self.last_dates[table]}"
            gap = self.stale(table)
            if gap is not None:
                head += f" ({gap} days before the end of the data: is this table up to date?)"
        return head

    def lines(self) -> list[str]:
        """A human-readable summary, one line per table and per note."""
        out = [f"source {self.source}, observed until {self.observed_until}"
               + (f" ({self.end_reason})" if self.end_reason else "")]
        out += [f"  {line}" for line in self.shape]
        for table, n in self.rows_read.items():
            out.append(f"  {self._table_head(table, n)}")
            out += [f"    {line}" for line in self.renamed.get(table, [])]
            for reason, count in self.set_aside.get(table, {}).items():
                out.append(f"    set aside {count:,} rows: {reason}")
            out += [f"    {line}" for line in self.checks.get(table, [])]
            if self.ignored_columns.get(table):
                out.append(f"    ignored extra columns: {', '.join(self.ignored_columns[table])}")
            if self.defaulted_columns.get(table):
                out.append(f"    absent optional columns: {', '.join(self.defaulted_columns[table])}")
        for table in self.missing_tables:
            out.append(f"  {table}: not in the source; its features are empty")
        out += [f"  not read: {entry}" for entry in self.unread]
        out += [f"  {note}" for note in self.notes]
        return out

    def brief(self) -> list[str]:
        """The lines a training run logs: the end and shape, one line of tables with their
        last dates, and every line that needs a look (set-asides, suspicious records,
        renamed or unread inputs, notes)."""
        out = [f"end of the data {self.observed_until}: {self.end_reason}"] if self.end_reason \
            else []
        out += list(self.shape)
        out.append("tables: " + "; ".join(
            f"{t} {self.rows_kept[t]:,} rows, last {self.last_dates.get(t, '-')}"
            + (f" (stale: {self.stale(t)} days before the end)" if self.stale(t) else "")
            for t in self.rows_read))
        for table in self.rows_read:
            out += [f"{table}: {line}" for line in self.renamed.get(table, [])]
            out += [f"{table}: set aside {count:,} rows: {reason}"
                    for reason, count in self.set_aside.get(table, {}).items()]
            out += [f"{table}: {line}" for line in self.checks.get(table, [])]
        out += [f"not read: {entry}" for entry in self.unread]
        return out + list(self.notes)
