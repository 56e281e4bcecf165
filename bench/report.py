"""Summarise benchmark runs: per (scenario, peer) figures, ratios, Markdown and JSON.

Aggregation over rounds: rates are the median of the rounds; p50/p99 are computed over the
latency samples of all rounds pooled together; peak memory is the largest of the rounds.
Ratios are postwright's figure divided by the other peer's, for every column (above 1 means
postwright has more of it: better for rates, worse for latency and memory).

What this module does not do: run anything or touch the network.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .load import RunResult, Scenario

COLUMNS = ("accepted msg/s", "end-to-end msg/s", "p50 ms", "p99 ms", "peak RSS MB",
           "peak PSS MB")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    """One (scenario, peer) cell of the report; values are None when not applicable."""

    scenario: str
    peer: str
    runs: int
    ok_runs: int
    accepted_rate: float | None = None
    accepted_range: tuple[float, float] | None = None
    e2e_rate: float | None = None
    e2e_range: tuple[float, float] | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_samples: int = 0
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    errors: list[str] = field(default_factory=list)

    def values(self) -> tuple[float | None, ...]:
        return (self.accepted_rate, self.e2e_rate, self.p50_ms, self.p99_ms,
                self.peak_rss_mb, self.peak_pss_mb)


def _median_range(values: list[float]) -> tuple[float | None, tuple[float, float] | None]:
    if not values:
        return None, None
    return statistics.median(values), (min(values), max(values))


def summarise(results: Iterable[RunResult]) -> list[Summary]:
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        grouped.setdefault((r.scenario, r.peer), []).append(r)
    out = []
    for (scenario, peer), runs in grouped.items():
        good = [r for r in runs if r.ok]
        s = Summary(scenario, peer, len(runs), len(good),
                    errors=[f"round {r.round}: {r.error}" for r in runs if r.error])
        s.accepted_rate, s.accepted_range = _median_range(
            [r.accepted_rate for r in good if r.accepted_rate is not None])
        s.e2e_rate, s.e2e_range = _median_range(
            [r.e2e_rate for r in good if r.e2e_rate is not None])
        pooled = [x for r in good for x in r.latencies_ms]
        s.latency_samples = len(pooled)
        s.p50_ms, s.p99_ms = percentile(pooled, 50), percentile(pooled, 99)
        if good:
            s.peak_rss_mb = max(r.peak_rss_kb for r in good) / 1024
            s.peak_pss_mb = max(r.peak_pss_kb for r in good) / 1024
        out.append(s)
    return out


def ratios(summaries: list[Summary], base: str = "postwright"
           ) -> dict[tuple[str, str], tuple[float | None, ...]]:
    """(scenario, other peer) → postwright's value / the other's, column by column."""
    by_key = {(s.scenario, s.peer): s for s in summaries}
    out: dict[tuple[str, str], tuple[float | None, ...]] = {}
    for (scenario, peer), s in by_key.items():
        mine = by_key.get((scenario, base))
        if peer == base or mine is None:
            continue
        pairs = zip(mine.values(), s.values(), strict=True)
        out[(scenario, peer)] = tuple(a / b if a is not None and b else None for a, b in pairs)
    return out


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}×"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(summaries: list[Summary], scenarios: dict[str, Scenario], peers: list[str],
             extras: list[dict[str, object]], header: list[str]) -> str:
    """The report: header lines, the comparison table, its legend, the postwright-only table."""
    lines = [*header, ""]
    by_key = {(s.scenario, s.peer): s for s in summaries}
    rel = ratios(summaries)
    if summaries:
        lines.append("| scenario | peer | " + " | ".join(COLUMNS) + " |")
        lines.append("|---|---|" + "--:|" * len(COLUMNS))
        for name in scenarios:
            first = True
            for peer in peers:
                s = by_key.get((name, peer))
                if s is None:
                    continue
                label = f"`{name}`" if first else ""
                first = False
                if not s.ok_runs:
                    why = s.errors[-1] if s.errors else "no successful run"
                    blank = " |" * (len(COLUMNS) - 1)
                    lines.append(f"| {label} | {peer} | failed: {why} |{blank}")
                    continue
                cells = " | ".join(_num(v) for v in s.values())
                lines.append(f"| {label} | {peer} | {cells} |")
            for peer in peers:
                r = rel.get((name, peer))
                if r is not None:
                    cells = " | ".join(_num(v, "x") for v in r)
                    lines.append(f"| | postwright ÷ {peer} | {cells} |")
        lines.append("")
        lines.extend(f"- `{s.name}`: {s.describe()}" for s in scenarios.values()
                     if any(x.scenario == s.name for x in summaries))
        lines.append("")
    if extras:
        lines.append("| postwright only | result |")
        lines.append("|---|---|")
        lines.extend(f"| `{e['scenario']}` | {describe_extra(e)} |" for e in extras)
        lines.append("")
    return "\n".join(lines)


def _mb(kb: object) -> str:
    return f"{int(str(kb)) / 1024:.1f} MB" if isinstance(kb, int) else "n/a"


def describe_extra(e: dict[str, object]) -> str:
    if e.get("skipped"):
        return f"skipped: {e['skipped']}"
    if e["scenario"] == "idle-10k":
        text = (f"{e.get('greeted')} of {e.get('sessions')} sessions greeted in "
                f"{e.get('open_seconds')} s; server RSS {_mb(e.get('rss_before_kb'))} → "
                f"{_mb(e.get('rss_idle_kb'))} ({e.get('kb_per_session')} kB per session)")
        if e.get("failures"):
            text += f"; {e['failures']} failed ({e.get('last_failure')})"
        return text
    size = int(str(e.get("size", 0)))
    text = f"{size / 2**20:.0f} MiB body: "
    if e.get("error") and e.get("body_to_250_seconds") is None:
        return text + f"failed: {e['error']}"
    text += (f"250 {e.get('body_to_250_seconds')} s after the body began "
             f"({e.get('eod_to_250_seconds')} s after end-of-data), in the Maildir "
             f"{e.get('delivered_seconds')} s after connecting; RSS "
             f"{_mb(e.get('rss_before_kb'))} → peak {_mb(e.get('peak_rss_kb'))} "
             f"(+{_mb(e.get('growth_kb'))})")
    if e.get("error"):
        text += f"; {e['error']}"
    return text


def write_json(directory: Path, payload: dict[str, object]) -> Path:
    """Write ``payload`` to ``directory/<UTC time>.json`` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (RunResult, Summary)):
        return asdict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
