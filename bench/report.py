"""The report: the table of a run, printed and written to bench/results.md with its notes.

Run again from the last run's results: .venv/bin/python bench/run.py --report
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Scenarios whose i-th value for each target comes from the same turn.
PAIRED = {"seq_latency", "stream_ttfb", "fake_ttfb", "tokenize_rps", "complete32_rps",
          "cold_start"}
ROWS = [("1. sequential 8-token completion p50 (ms)", "seq_latency", 0.5, 1000),
        ("1. sequential 8-token completion p99 (ms)", "seq_latency", 0.99, 1000),
        ("2. streaming time to first byte p50 (ms)", "stream_ttfb", 0.5, 1000),
        ("2. streaming inter-chunk gap p50 (ms)", "stream_gap", 0.5, 1000),
        ("2. time to first byte, a child that streams at once (fake) p50 (ms)",
         "fake_ttfb", 0.5, 1000),
        ("3. /tokenize, 32 clients: requests/s", "tokenize_rps", 0.5, 1),
        ("3. /tokenize, 32 clients: p99 (ms)", "tokenize_latency", 0.99, 1000),
        ("3. completions, 32 clients: requests/s", "complete32_rps", 0.5, 1),
        ("3. completions, 32 clients: p99 (ms)", "complete32_latency", 0.99, 1000),
        ("4. cold start to first token (ms)", "cold_start", 0.5, 1000),
        ("4. llmd readiness detection after the child can answer (ms)", "readiness", 0.5,
         1000),
        ("5. swap storm (models_max=1, 2 models, 60 requests): seconds", "swap_time", 0.5, 1),
        ("5. swap storm: model loads", "swap_loads", 0.5, 1),
        ("5. swap storm: failed requests", "swap_failed", 0.5, 1),
        ("6. socket-activated start to first answer p50 (ms)", "activated_start", 0.5, 1000),
        ("6. llmctl ps wall time p50 (ms)", "llmctl_ps", 0.5, 1000),
        ("7. 1,000 slow streams: llmd peak RSS (MiB)", "streams_rss_mib", 0.5, 1),
        ("7. 1,000 slow streams: llmd CPU (% of one core)", "streams_cpu_pct", 0.5, 1),
        ("7. 1,000 slow streams: streams completed", "streams_completed", 0.5, 1),
        ("7. 2,000-model directory: catalog scan (ms)", "scan_seconds", 0.5, 1000),
        ("7. 2,000-model directory: GET /v1/models p50 (ms)", "models_list_latency", 0.5,
         1000),
        ("requests the server dropped unanswered (client retried)", "dropped", 0.5, 1)]
# What llmd added to the time to first byte: (key, baseline, how the report says it).
ADDED = [("stream_ttfb", "direct", "against direct"), ("stream_ttfb", "router", "against router"),
         ("fake_ttfb", "direct", "against the fake child straight")]


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (0.5: the median)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ratio(results: dict[str, dict[str, list[float]]], key: str, q: float, base: str) -> str:
    ours, theirs = results["llmd"].get(key), results[base].get(key)
    if key in PAIRED and q == 0.5 and ours and theirs and len(ours) == len(theirs):
        # The i-th values of each target come from the same turn: the median of their
        # ratios is the drift-free figure the targets are stated in.
        return f"{pct([a / b for a, b in zip(ours, theirs)], 0.5):.2f}"
    if not ours or not theirs or not pct(theirs, q):
        return "-"
    return f"{pct(ours, q) / pct(theirs, q):.2f}"


def table(results: dict[str, dict[str, list[float]]], setup: str) -> str:
    """The report's text: the setup, the table, and what llmd added to the first byte."""
    lines = [f"# llmd side by side ({datetime.date.today()})", "", setup, "",
             "Values are medians (p99 where the row says so) over the run. Ratios in the "
             "p50, requests/s and cold start rows are medians of the ratios turn by turn; "
             "the others are ratios of the values shown.", "",
             "| scenario | direct | llama.cpp router | llmd | llmd/direct | llmd/router |",
             "|---|---|---|---|---|---|"]
    for label, key, q, unit in ROWS:
        cells = [f"{pct(results[n][key], q) * unit:.1f}" if results[n].get(key) else "-"
                 for n in ("direct", "router", "llmd")]
        cells += [_ratio(results, key, q, base) for base in ("direct", "router")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    added = []
    for key, base, how in ADDED:
        ours, theirs = results["llmd"].get(key, []), results[base].get(key, [])
        if ours and len(ours) == len(theirs):
            median = pct([(a - b) * 1000 for a, b in zip(ours, theirs)], 0.5)
            added.append(f"{median:+.1f} ms {how}")
    if added:
        lines += ["", "Time to first byte llmd added, median turn by turn: "
                  + ", ".join(added) + "."]
    return "\n".join(lines) + "\n"


def write(results: dict[str, dict[str, list[float]]], setup: str) -> None:
    """Print the table; write it to results.md above the notes kept there, and results.json."""
    text = table(results, setup)
    print(text)
    out = ROOT / "bench" / "results.md"
    notes = ""
    if out.exists() and "## Notes" in out.read_text():
        notes = out.read_text()[out.read_text().index("## Notes"):]
    out.write_text(text + ("\n" + notes if notes else ""))
    (ROOT / "bench" / "results.json").write_text(json.dumps(results))
