"""The targets of every kept report, one row per run, from their JSON.

    python -m benchmarks.history [DIR] [--links PREFIX]    (DIR: benchmarks/results)

Prints a Markdown table: when each run was made, on which commit (reports
written before 2026-11-25 02:24 UTC did not record it), and what each of the
performance targets measured in it, with ``(fail)`` where the target
failed.  The figures are the reports' own ``targets`` entries, shortened
(``50/57 cases pass; worst ...`` -> ``50/57``), never retyped, so the
README's table of runs can be regenerated rather than copied by hand.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from benchmarks import RESULTS
from benchmarks.report import md_table, partial_sections

# column title -> a substring of the target's name that picks it
COLUMNS = (("pooling >= 3x NCHW", "faster than PyTorch NCHW"),
           ("pooling >= 1x channels_last", "no slower than PyTorch channels_last"),
           ("LeNet epoch / PyTorch", "one LeNet epoch"),
           ("LeNet numpy / minicnn", "(lenet epoch)"),
           ("default numpy / minicnn", "(default epoch)"),
           ("warm start", "warm start"),
           ("peak RSS", "peak RSS"))

_SHORT = (re.compile(r"^(\d+/\d+) cases pass"),      # pooling: the count that passed
          re.compile(r"= ([0-9.]+×)"),                  # a ratio
          re.compile(r"\((\d+ MiB)\)"),                # memory
          re.compile(r"^([0-9.]+ s)$"))                # a time


def short(measured: str) -> str:
    """The figure of a target's ``measured`` text, without its explanation."""
    for pattern in _SHORT:
        m = pattern.search(measured)
        if m:
            return m.group(1)
    return measured


def row(path: str, results: dict, links: str = "") -> list[str]:
    env, meta = results.get("environment", {}), results.get("meta", {})
    run = partial_sections(meta)
    kind = meta.get("mode", "?") + (f" ({', '.join(run)})" if run else "")
    wall = meta.get("wall")
    name = os.path.basename(path)[:-len(".json")]
    cells = [f"[{name}]({links}{name}.md)", env.get("date", "?"),
             env.get("commit") or "not recorded", kind, "?" if wall is None else f"{wall:.0f} s"]
    targets = results.get("targets", [])
    for _, key in COLUMNS:
        t = next((t for t in targets if key in t.get("target", "")), None)
        if t is None or t.get("pass") is None:
            cells.append("—")
        else:
            cells.append(short(t.get("measured", "")) + ("" if t["pass"] else " (fail)"))
    return cells


def table(folder: str, links: str = "") -> str:
    """The Markdown table of every ``*.json`` report in ``folder``, oldest
    first; each report's name links to ``links + name.md``."""
    rows = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        rows.append((results.get("environment", {}).get("date", ""), row(path, results, links)))
    if not rows:
        raise FileNotFoundError(f"benchmarks.history: no *.json report in {folder!r}")
    rows.sort(key=lambda r: r[0])
    head = ["report", "date", "commit", "run", "wall"] + [c for c, _ in COLUMNS]
    return md_table(head, [r for _, r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=RESULTS, metavar="DIR",
                   help=f"folder of JSON reports (default {RESULTS})")
    p.add_argument("--links", default="", metavar="PREFIX",
                   help="prefix of the links to the Markdown reports (e.g. benchmarks/results/ "
                        "for a table in the top-level README)")
    args = p.parse_args(argv)
    try:
        print(table(args.folder, args.links))
    except (OSError, ValueError) as e:         # json.JSONDecodeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
