"""Write the demo's results table into README.md from a run's ``demo_results.json``, with the commit,
machine and date it came from, so that a table in the README is always one a command produced.

Usage (``make readme-figures`` runs ``make demo`` first on the current checkout):
  python scripts/readme_figures.py --results logs/demo_results.json [--readme README.md] [--check]

The table goes between the ``<!-- demo-table:begin -->`` and ``<!-- demo-table:end -->`` markers of the
README; everything else is left as it is. ``--check`` rewrites nothing and exits 1 when the README's table
differs from what the results would write (the figures, not the provenance line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

BEGIN, END = "<!-- demo-table:begin -->", "<!-- demo-table:end -->"
COLUMNS = ("task", "protocol", "metric", "chance", "random_init", "pretrained")
HEADER = ("task", "protocol", "metric", "chance", "random init", "pre-trained")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The rows of ``demo_report.py --out`` as a markdown table (figures in %, one decimal)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"a results row lacks {', '.join(missing)}: {row}")
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def git_commit(repo: Path) -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""

    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    try:
        commit = run("rev-parse", "--short", "HEAD").strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance(results: Path, repo: Path) -> str:
    cores = os.cpu_count()
    return (
        f"From `make demo` at commit {git_commit(repo)} on {platform.machine()} ({cores} cores, "
        f"{platform.system()}), {date.fromtimestamp(results.stat().st_mtime).isoformat()}; written by "
        "`scripts/readme_figures.py` from `logs/demo_results.json`."
    )


def replace_between_markers(text: str, body: str, where: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where}: needs exactly one {BEGIN} followed by one {END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def current_table(text: str) -> str:
    inner = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return "\n".join(line for line in inner.strip().splitlines() if line.startswith("|"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("logs/demo_results.json"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the table differs")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results}: no such file (run `make demo` first; it writes it)")
    rows = json.loads(args.results.read_text())
    table = markdown_table(rows)
    readme = args.readme.read_text()
    if args.check:
        same = current_table(replace_between_markers(readme, table, str(args.readme))) == current_table(
            readme
        )
        print(f"{args.readme}: the demo table {'matches' if same else 'differs from'} {args.results}")
        return 0 if same else 1
    body = f"{provenance(args.results, args.readme.resolve().parent)}\n\n{table}"
    args.readme.write_text(replace_between_markers(readme, body, str(args.readme)))
    print(f"{args.readme}: demo table written from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
