"""Write bench/RESULTS.md from the load harness's result files: fanout_tx beside Pushpin.

    python bench/report.py --harness ../shared/bench --out bench/RESULTS.md \
        [--note "load: ..."]... RESULTS.jsonl...

The files are the harness's ``results/<target>-<stamp>.jsonl`` (one JSON line per scenario
run, plus a ``meta`` line per run); every file of one target is pooled and medians are
taken. The issue's targets are ratios against Pushpin measured in the same session, so
they are computed here from the two targets' medians; the harness's own ``compare`` and
``table`` output follow, for everything else it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OURS = "fanout_tx"
THEIRS = "pushpin"
ONE_WORKER = "fanout_tx_1worker"  # bench/targets/fanout_tx_1worker.sh: ``workers = 1``
SCALING_GOAL = 1.6  # issue 15: ``workers = 2`` over ``workers = 1`` on this 2-core machine
SCALING = (("passthrough: req/s", "passthrough", None, "rps"),
           ("hold 10k: connections/s", "hold", 10000, "conns_per_s"))


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``ours / theirs`` (or ``theirs / ours`` when lower is
    better) must reach ``goal``."""

    label: str
    scenario: str
    n: int | None
    key: str
    goal: float
    higher_is_better: bool = True
    unit: str = ""


TARGETS = (  # issue 15's goals (fanout_tx with ``workers = auto``)
    Target("fanout 1k x 200: deliveries/s", "fanout", 1000, "deliveries_per_s", 3.0),
    Target("fanout 10k x 200: deliveries/s", "fanout", 10000, "deliveries_per_s", 3.0),
    Target("hold 10k: connections/s", "hold", 10000, "conns_per_s", 3.0),
    Target("hold 10k: RSS per held connection (above idle)", "hold", 10000,
           "rss_delta_per_conn_kb", 3.0, higher_is_better=False, unit=" kB"),
    Target("latency: p99", "latency", None, "lat_ms_p99", 1.0, higher_is_better=False,
           unit=" ms"),
    Target("channels 5k: deliveries/s", "channels", 5000, "deliveries_per_s", 2.5),
    Target("passthrough: req/s", "passthrough", None, "rps", 4.0),
    Target("ws 2k x 100: deliveries/s", "ws", 2000, "deliveries_per_s", 40.0),
)


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip().startswith("{"):
                rows.append(json.loads(line))
    return rows


def median_of(rows: Sequence[dict[str, Any]], target: str, scenario: str, n: int | None,
              key: str) -> float | None:
    values = [
        r[key] for r in rows
        if r.get("target") == target and r.get("scenario") == scenario
        and (n is None or r.get("n") == n) and isinstance(r.get(key), (int, float))
    ]
    return statistics.median(values) if values else None


def total_lost(rows: Sequence[dict[str, Any]], target: str) -> int:
    return sum(int(r.get("lost") or 0) for r in rows
               if r.get("target") == target and r.get("scenario") in ("fanout", "channels", "ws"))


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return text + unit


# The harness README: distrust a run whose other processes used more than ~10 % of a core,
# or whose steal time was above ~1 %.
MAX_OTHER_CPU_PCT = 10.0
MAX_STEAL_PCT = 1.0


def is_clean(row: dict[str, Any]) -> bool:
    cpu = row.get("cpu") or {}
    return (cpu.get("other_cpu_pct") or 0) <= MAX_OTHER_CPU_PCT and \
        (cpu.get("steal_pct") or 0) <= MAX_STEAL_PCT


def _ratio(rows: Sequence[dict[str, Any]], t: Target) -> tuple[float | None, float | None,
                                                              float | None]:
    ours = median_of(rows, OURS, t.scenario, t.n, t.key)
    theirs = median_of(rows, THEIRS, t.scenario, t.n, t.key)
    ratio = None
    if ours and theirs:
        ratio = ours / theirs if t.higher_is_better else theirs / ours
    return ours, theirs, ratio


def _verdict(ratio: float | None, goal: float) -> str:
    return "-" if ratio is None else ("yes" if ratio >= goal else "**no**")


def target_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """(target, fanout_tx, pushpin, ratio, goal, met, clean runs only) per target; a ratio
    above 1 is better. The last column repeats ratio and verdict over the runs that the
    harness's noise rule keeps."""
    clean = [r for r in rows if is_clean(r)]
    out = []
    for t in TARGETS:
        ours, theirs, ratio = _ratio(rows, t)
        clean_ratio = _ratio(clean, t)[2]
        goal = f">= {t.goal:g}x" if t.higher_is_better else (
            f"<= 1/{t.goal:g} of Pushpin's" if t.goal != 1 else "<= Pushpin's")
        out.append((t.label, _number(ours, t.unit), _number(theirs, t.unit),
                    "-" if ratio is None else f"{ratio:.2f}x", goal, _verdict(ratio, t.goal),
                    "-" if clean_ratio is None
                    else f"{clean_ratio:.2f}x ({_verdict(clean_ratio, t.goal)})"))
    lost = total_lost(rows, OURS)
    out.append(("messages lost (fanout, channels, ws; all runs)", str(lost),
                str(total_lost(rows, THEIRS)), "-", "0", "yes" if lost == 0 else "**no**", "-"))
    return out


def scaling_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """(figure, workers = auto, workers = 1, ratio, goal, met) for the scaling line."""
    out = []
    for label, scenario, n, key in SCALING:
        many = median_of(rows, OURS, scenario, n, key)
        one = median_of(rows, ONE_WORKER, scenario, n, key)
        ratio = many / one if many and one else None
        out.append((label, _number(many, ""), _number(one, ""),
                    "-" if ratio is None else f"{ratio:.2f}x", f">= {SCALING_GOAL:g}x",
                    _verdict(ratio, SCALING_GOAL)))
    return out


def noisy_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The scenario runs the noise rule distrusts, one line each."""
    lines = []
    for r in rows:
        if r.get("scenario") != "meta" and not is_clean(r):
            cpu = r.get("cpu") or {}
            n = f" {r['n']:,}" if r.get("n") else ""
            lines.append(f"- {r.get('target')} run {r.get('run')}, {r.get('scenario')}{n}: "
                         f"other processes {cpu.get('other_cpu_pct')} %, steal "
                         f"{cpu.get('steal_pct')} %")
    return lines or ["- none"]


def machine_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    metas = [r for r in rows if r.get("scenario") == "meta"]
    if not metas:
        return []
    first = metas[0]
    loads = {r.get("target"): [] for r in metas}
    for r in metas:
        loads[r.get("target")].append(" ".join(r.get("loadavg", [])))
    versions = sorted({r.get("target_version") for r in metas if r.get("target_version")})
    lines = [
        f"- machine: {first.get('cores')} cores, {first.get('cpu_model')}, kernel "
        f"{first.get('kernel')}, Python {first.get('python')}",
        f"- runs per target: {', '.join(f'{t} {len(v)}' for t, v in loads.items())}"
        f" (first {min(r['time'] for r in metas)}, last {max(r['time'] for r in metas)})",
    ]
    if versions:
        lines.append(f"- compared with: {', '.join(versions)}")
    for target, values in loads.items():
        lines.append(f"- load average (1/5/15 min) at each {target} run's start: "
                     f"{'; '.join(values)}")
    return lines


def markdown_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def harness_output(harness: Path | None, command: str, paths: Sequence[Path]) -> str:
    """``bench.py compare|table`` output, or a note when the harness is not there."""
    if harness is None or not (harness / "harness" / "bench.py").exists():
        return f"(harness not found: `bench.py {command}` skipped)\n"
    result = subprocess.run(
        [sys.executable, str(harness / "harness" / "bench.py"), command, *map(str, paths)],
        capture_output=True, text=True, check=False,
    )
    return result.stdout if result.returncode == 0 else f"(bench.py {command} failed: " \
        f"{result.stderr.strip()[-300:]})\n"


def render(paths: Sequence[Path], harness: Path | None, notes: Sequence[str],
           run: Callable[[Path | None, str, Sequence[Path]], str] = harness_output) -> str:
    rows = load(paths)
    by_target: dict[str, list[Path]] = {}
    for path in paths:
        by_target.setdefault(path.name.split("-", 1)[0], []).append(path)
    out = [
        "# fanout_tx beside Pushpin: benchmark results",
        "",
        "Regenerated by `bench/run.sh` (see bench/README.md): the shared load harness runs "
        "every scenario against both servers, alternating, on the same machine in the same "
        "session; medians over all runs of each target. Ratios are fanout_tx against "
        "Pushpin (above 1 is better for fanout_tx). Raw results: `bench-results/` "
        "(not committed).",
        "",
        *machine_lines(rows),
        *[f"- {note}" for note in notes],
        "",
        "## Targets (issue 15)",
        "",
        *markdown_table(("target", OURS, THEIRS, "ratio", "goal", "met",
                         "clean runs only"), target_rows(rows)),
        "",
        f"\"Clean runs only\": without the scenario runs during which other processes used "
        f"more than {MAX_OTHER_CPU_PCT:g} % of a core or steal time was above "
        f"{MAX_STEAL_PCT:g} % (the harness's noise rule). Those runs:",
        "",
        *noisy_lines(rows),
        "",
        "Where the time goes for the targets not met, and what would close them: "
        "bench/README.md, \"Targets not met\".",
        "",
        "## Scaling: `workers = auto` over `workers = 1` (issue 15)",
        "",
        *markdown_table(("figure", "workers = auto", "workers = 1", "ratio", "goal", "met"),
                        scaling_rows(rows)),
        "",
        "## Side by side (`bench.py compare`: median (min-max) over runs)",
        "",
        run(harness, "compare", list(paths)).rstrip(),
        "",
    ]
    for target, files in by_target.items():
        table = run(harness, "table", files).rstrip().splitlines()
        out += [f"## {target}: every scenario (`bench.py table`)", "",
                *[line for line in table if not line.startswith("# ")], ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--harness", type=Path, default=None,
                        help="the shared bench folder (with harness/bench.py)")
    parser.add_argument("--out", type=Path, default=None, help="default: stdout")
    parser.add_argument("--note", action="append", default=[], help="a line for the header")
    options = parser.parse_args()
    text = render(options.paths, options.harness, options.note)
    if options.out is None:
        sys.stdout.write(text)
    else:
        options.out.write_text(text)


if __name__ == "__main__":
    main()
