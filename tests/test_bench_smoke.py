"""Smoke runs of the bench scripts (seconds, tiny sizes): they start, measure and report.
No benchmark runs here; bench/run.sh is the real thing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def meta(target: str, load: str) -> dict[str, Any]:
    return {"target": target, "scenario": "meta", "time": f"2026-11-27T23:0{load[0]}:00",
            "target_version": "pushpin 1.36.0" if target == "pushpin" else "",
            "cores": 2, "cpu_model": "Test CPU", "loadavg": [load, load, load],
            "kernel": "k", "python": "3"}


def results(target: str, fanout: float, hold_kb: float, p99: float, lost: int,
            load: str, other_cpu: float = 0.0, run: int = 1) -> str:
    rows = [
        meta(target, load),
        {"target": target, "scenario": "fanout", "run": run, "n": 1000,
         "deliveries_per_s": fanout, "lost": lost,
         "cpu": {"other_cpu_pct": other_cpu, "steal_pct": 0.0}},
        {"target": target, "scenario": "hold", "n": 10000, "conns_per_s": 1000.0,
         "rss_delta_per_conn_kb": hold_kb},
        {"target": target, "scenario": "latency", "n": 100, "lat_ms_p99": p99, "lost": 0},
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


class RouterBenchSmokeTests(SynchronousTestCase):
    def test_router_bench_runs_with_tiny_sizes(self) -> None:
        out = subprocess.run(
            [sys.executable, str(BENCH / "router_bench.py"), "--subscribers", "50",
             "--items", "2", "--repeat", "1"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        self.assertIn("50 subscribers x 2 items", out)
        self.assertIn("deliveries/s", out)


class ReportTests(SynchronousTestCase):
    """bench/report.py turns harness result files into the side-by-side RESULTS.md."""

    def setUp(self) -> None:
        self.report = load_report()
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.ours = self.dir / "fanout_tx-1.jsonl"
        self.ours2 = self.dir / "fanout_tx-2.jsonl"
        self.theirs = self.dir / "pushpin-1.jsonl"
        self.ours.write_text(results("fanout_tx", 900_000, 10.0, 4.0, 0, "1.5"))
        self.ours2.write_text(results("fanout_tx", 700_000, 12.0, 6.0, 0, "2.5",
                                      other_cpu=35.0, run=2))
        self.theirs.write_text(results("pushpin", 400_000, 45.0, 5.0, 3, "0.5"))
        self.paths = [self.ours, self.ours2, self.theirs]

    def row(self, rows: list[tuple[str, ...]], label: str) -> tuple[str, ...]:
        return next(r for r in rows if r[0].startswith(label))

    def test_targets_are_ratios_of_medians(self) -> None:
        rows = self.report.target_rows(self.report.load(self.paths))
        self.assertEqual(self.row(rows, "fanout 1k"),
                         ("fanout 1k x 200: deliveries/s", "800,000", "400,000", "2.00x",
                          ">= 3x", "**no**", "2.25x (**no**)"))  # clean: run 1 only
        # lower is better: Pushpin's RSS over ours, 45 / 11 = 4.09 >= 3
        self.assertEqual(self.row(rows, "hold 10k: RSS")[3:6],
                         ("4.09x", "<= 1/3 of Pushpin's", "yes"))
        # p99 5.0 (ours, median of 4 and 6) vs 5.0: equal meets "<= Pushpin's"
        self.assertEqual(self.row(rows, "latency")[3:6], ("1.00x", "<= Pushpin's", "yes"))
        self.assertEqual(self.row(rows, "hold 10k: conn")[3:6], ("1.00x", ">= 3x", "**no**"))
        self.assertEqual(self.row(rows, "passthrough")[1:], ("-", "-", "-", ">= 4x", "-", "-"))
        self.assertEqual(self.row(rows, "messages lost")[1:3], ("0", "3"))

    def test_scaling_is_workers_auto_over_one_worker(self) -> None:
        one = self.dir / "fanout_tx_1worker-1.jsonl"
        one.write_text(results("fanout_tx_1worker", 500_000, 10.0, 4.0, 0, "1.5")
                       .replace('"conns_per_s": 1000.0', '"conns_per_s": 550.0'))
        rows = self.report.scaling_rows(self.report.load([*self.paths, one]))
        self.assertEqual(self.row(rows, "hold 10k"),
                         ("hold 10k: connections/s", "1,000", "550", "1.82x", ">= 1.6x", "yes"))
        self.assertEqual(self.row(rows, "passthrough")[1:], ("-", "-", "-", ">= 1.6x", "-"))

    def test_noisy_runs_are_listed_and_left_out_of_the_clean_ratio(self) -> None:
        rows = self.report.load(self.paths)
        self.assertEqual(self.report.noisy_lines(rows),
                         ["- fanout_tx run 2, fanout 1,000: other processes 35.0 %, steal 0.0 %"])

    def test_markdown_has_machine_targets_and_harness_tables(self) -> None:
        calls: list[tuple[str, list[str]]] = []

        def fake_harness(_harness: Path | None, command: str, paths: list[Path]) -> str:
            calls.append((command, sorted(p.name for p in paths)))
            return f"<{command} output>\n"

        text = self.report.render(self.paths, None, ["load note"], run=fake_harness)
        self.assertIn("2 cores, Test CPU", text)
        self.assertIn("compared with: pushpin 1.36.0", text)
        self.assertIn("fanout_tx run's start: 1.5 1.5 1.5; 2.5 2.5 2.5", text)
        self.assertIn("- load note", text)
        self.assertIn("| fanout 1k x 200: deliveries/s | 800,000 | 400,000 | 2.00x |", text)
        self.assertEqual(calls, [
            ("compare", ["fanout_tx-1.jsonl", "fanout_tx-2.jsonl", "pushpin-1.jsonl"]),
            ("table", ["fanout_tx-1.jsonl", "fanout_tx-2.jsonl"]),
            ("table", ["pushpin-1.jsonl"]),
        ])
        self.assertIn("<compare output>", text)

    def test_cli_writes_the_file_without_a_harness(self) -> None:
        out = self.dir / "RESULTS.md"
        subprocess.run(
            [sys.executable, str(BENCH / "report.py"), "--out", str(out),
             *map(str, self.paths)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        text = out.read_text()
        self.assertIn("## Targets (issue 15)", text)
        self.assertIn("harness not found", text)


class ChurnReportTests(SynchronousTestCase):
    """bench/churn_report.py: the per-cycle table of ``bench/run.sh churn`` and its verdict."""

    def run_report(self, rss_mb: list[int], rates: list[float]) -> str:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        rows = [meta("fanout_tx", "1")] + [
            {"target": "fanout_tx", "scenario": "hold", "run": i + 1, "n": 10000,
             "server_rss_kb": mb * 1024, "conns_per_s": rate}
            for i, (mb, rate) in enumerate(zip(rss_mb, rates, strict=True))]
        (folder / "churn.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        done = subprocess.run([sys.executable, str(BENCH / "churn_report.py"),
                               str(folder / "churn.jsonl")],
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    def test_flat_and_steady(self) -> None:
        out = self.run_report([160, 170, 172, 171], [3000, 3100, 2900, 3050])
        self.assertIn("| server RSS at 10,000 held (MB) | 160 | 170 | 172 | 171 |", out)
        self.assertIn("+0.6% (target within +15%): met", out)
        self.assertIn("(target at least 70%): met", out)

    def test_growth_and_a_stall_are_named(self) -> None:
        out = self.run_report([163, 210, 268, 533], [3556, 2953, 1735, 3652])
        self.assertIn("+153.8% (target within +15%): NOT met", out)
        self.assertIn("slowest cycle 1,735 conns/s = 53% of the median", out)
        self.assertIn("NOT met", out.splitlines()[-1])
