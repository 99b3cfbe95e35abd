"""The churn run's table (issue 19): one server, the hold scenario repeated (``bench.py run
--scenarios hold --repeat 10``: N streams opened, held, closed, each time), read from the
harness's JSON lines.

    python bench/churn_report.py RESULTS.jsonl...

Prints, per cycle, the server's RSS with N held and the connections set up per second,
then the issue's two targets: RSS at the last cycle within 15 % of cycle 2 (memory flat
once warm), and no cycle's rate below 70 % of the median (no stop-the-world collection).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

RSS_GROWTH_LIMIT = 0.15
RATE_FLOOR = 0.70


def hold_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                if row.get("scenario") == "hold" and row.get("conns_per_s"):
                    rows.append(row)
    return sorted(rows, key=lambda row: row["run"])


def report(rows: list[dict[str, Any]]) -> tuple[str, bool]:
    """The markdown table and the verdict lines; True when both targets are met."""
    if len(rows) < 3:
        return "fewer than 3 hold cycles: nothing to compare\n", False
    lines = ["| cycle | " + " | ".join(str(i + 1) for i in range(len(rows))) + " |",
             "|---|" + "---|" * len(rows),
             f"| server RSS at {rows[0]['n']:,} held (MB) | "
             + " | ".join(f"{row['server_rss_kb'] / 1024:.0f}" for row in rows) + " |",
             "| conns/s | " + " | ".join(f"{row['conns_per_s']:,.0f}" for row in rows) + " |",
             ""]
    second, last = rows[1]["server_rss_kb"], rows[-1]["server_rss_kb"]
    growth = last / second - 1
    rates = [row["conns_per_s"] for row in rows]
    median = statistics.median(rates)
    worst = min(rates)
    flat = growth <= RSS_GROWTH_LIMIT
    steady = worst >= RATE_FLOOR * median
    lines.append(f"- RSS cycle {len(rows)} vs cycle 2: {growth:+.1%} "
                 f"(target within +{RSS_GROWTH_LIMIT:.0%}): {'met' if flat else 'NOT met'}")
    lines.append(f"- slowest cycle {worst:,.0f} conns/s = {worst / median:.0%} of the median "
                 f"{median:,.0f} (target at least {RATE_FLOOR:.0%}): "
                 f"{'met' if steady else 'NOT met'}")
    return "\n".join(lines) + "\n", flat and steady


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    text, _met = report(hold_rows(parser.parse_args().paths))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
