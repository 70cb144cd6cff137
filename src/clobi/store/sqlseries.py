"""Time series in the SQL store: the dashboard's charts, kept like RRD archives.

One table, `series(metric, step_s, bucket, value)`: a point per metric, archive step and bucket
start. A sample lands in the finest archive (`SERIES_ARCHIVES[0]`); the bucket of each coarser
archive that holds it is recomputed from the finer points inside it, so it always agrees with
them whatever the order samples arrive in; points an archive no longer keeps are dropped in the
same transaction. Each metric thus holds at most `keep_s / step_s + 1` points per archive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from clobi.errors import UsageError
from clobi.store.base import SERIES_ARCHIVES, Archive, SeriesKind, series_kind
from clobi.store.sqlcore import Cursor, SqlCore

Point = tuple[float, float]


class SqlSeries(SqlCore):
    """Recording and reading time series."""

    def record_samples(self, ts: float, values: Mapping[str, float]) -> None:
        finest = SERIES_ARCHIVES[0]
        bucket = bucket_of(ts, finest)
        counts: list[dict[str, object]] = []
        others: list[dict[str, object]] = []
        for metric, value in values.items():
            if math.isfinite(value):
                kept = counts if series_kind(metric) is SeriesKind.COUNT else others
                kept.append(
                    {"metric": metric, "step_s": finest.step_s, "bucket": bucket, "value": value}
                )
        with self._tx() as cur:
            if counts:
                cur.executemany(self.q["add_sample"], counts)
            if others:
                cur.executemany(self.q["set_sample"], others)
            for finer, coarser in itertools.pairwise(SERIES_ARCHIVES):
                self._fold(cur, ts, finer, coarser)
            for archive in SERIES_ARCHIVES:
                cur.execute(
                    self.q["prune_series"],
                    {"step_s": archive.step_s, "before": bucket_of(ts - archive.keep_s, archive)},
                )

    def _fold(self, cur: Cursor, ts: float, finer: Archive, coarser: Archive) -> None:
        """Recompute `coarser`'s bucket holding `ts` from `finer`'s points inside it."""
        start = bucket_of(ts, coarser)
        cur.execute(
            self.q["series_window"],
            {"step_s": finer.step_s, "start": start, "end": start + coarser.step_s},
        )
        points: dict[str, list[float]] = {}
        for metric, value in cur.fetchall():
            points.setdefault(metric, []).append(value)
        rows = [
            {"metric": m, "step_s": coarser.step_s, "bucket": start, "value": merge(m, vs)}
            for m, vs in points.items()
        ]
        if rows:
            cur.executemany(self.q["set_sample"], rows)

    def read_series(
        self, metrics: Sequence[str], since: float, until: float, step_s: int | None = None
    ) -> dict[str, list[Point]]:
        archive = pick_archive(until - since, step_s)
        span = {
            "step_s": archive.step_s,
            "since": math.floor(since) - archive.step_s,
            "until": math.floor(until),
        }
        found: dict[str, list[Point]] = {}
        with self._tx(write=False) as cur:
            for metric in self._names(cur, metrics, span):
                cur.execute(self.q["select_series"], {"metric": metric, **span})
                found[metric] = [(float(b), float(v)) for b, v in cur.fetchall()]
        if step_s is not None and step_s != archive.step_s:
            found = {m: regroup(m, pts, step_s) for m, pts in found.items()}
        return found

    def _names(self, cur: Cursor, metrics: Sequence[str], span: dict[str, int]) -> list[str]:
        """The metrics asked for, each `prefix*` replaced by the metrics starting with
        `prefix` that have points in the span (in name order)."""
        names = dict.fromkeys(m for m in metrics if not m.endswith("*"))
        prefixes = [m[:-1] for m in metrics if m.endswith("*")]
        if prefixes:
            cur.execute(self.q["series_metrics"], span)
            present = sorted(m for (m,) in cur.fetchall())
            names.update(dict.fromkeys(m for m in present if m.startswith(tuple(prefixes))))
        return list(names)

    def count_finished(self, after_event_id: int | None) -> tuple[int, int]:
        with self._tx(write=False) as cur:
            if after_event_id is None:
                cur.execute(self.q["newest_event"])
                return 0, int(cur.fetchone()[0])
            cur.execute(self.q["count_finished"], {"after_id": after_event_id})
            count, newest = cur.fetchone()
            return int(count), int(newest)


def bucket_of(ts: float, archive: Archive) -> int:
    """The start of `archive`'s bucket holding `ts`."""
    return math.floor(ts / archive.step_s) * archive.step_s


def merge(metric: str, values: Iterable[float]) -> float:
    """Points of one metric merged into one coarser point: summed for counts, else averaged."""
    values = list(values)
    total = math.fsum(values)
    return total if series_kind(metric) is SeriesKind.COUNT else total / len(values)


def pick_archive(span_s: float, step_s: int | None = None) -> Archive:
    """The archive to read a span from: the finest that keeps the whole span (else the
    coarsest), among those whose step divides `step_s` when it is given."""
    usable = [a for a in SERIES_ARCHIVES if step_s is None or step_s % a.step_s == 0]
    if step_s is not None and (step_s <= 0 or not usable):
        steps = ", ".join(str(a.step_s) for a in SERIES_ARCHIVES)
        raise UsageError(f"series: step {step_s} s is not a positive multiple of {steps} s")
    covering = [a for a in usable if a.keep_s >= span_s]
    return covering[0] if covering else usable[-1]


def regroup(metric: str, points: Sequence[Point], step_s: int) -> list[Point]:
    """Points merged into buckets of `step_s` seconds (aligned on multiples of it)."""
    groups: dict[float, list[float]] = {}
    for bucket, value in points:
        groups.setdefault(math.floor(bucket / step_s) * step_s, []).append(value)
    return [(float(b), merge(metric, vs)) for b, vs in groups.items()]
