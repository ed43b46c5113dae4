"""Run the nbic benchmarks against their peer tools, print one table of ratios
and write it as markdown to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import traceback
from collections.abc import Callable

import bench_cache
import bench_list
import bench_netboot
import bench_pack
import bench_recipes
import bench_startup
import bench_trace
from common import REPO, Result, workdir
from timing import REPEAT, run

DOC = os.path.join(REPO, "docs", "benchmarks.md")
HEADER = ("benchmark", "nbic", "peer", "ratio", "target", "met?")


def benchmarks(args: argparse.Namespace) -> dict[str, Callable[[], list[Result]]]:
    table = {
        "pack": lambda: bench_pack.bench(3, args.n),
        "list": lambda: bench_list.bench(args.n),
        "trace": lambda: bench_trace.bench(args.n),
        "startup": lambda: bench_startup.bench(args.n),
        "cache": lambda: bench_cache.bench(args.n),
        "netboot": lambda: bench_netboot.bench(args.n),
        "recipes": lambda: bench_recipes.bench(),
    }
    if args.level19:
        table["pack19"] = lambda: bench_pack.bench(19, 1)
    return table


def value(number: float | None, unit: str) -> str:
    if number is None:
        return "-"
    return f"{int(number):,} B" if unit == "bytes" else f"{number:.3f} s"


def row(result: Result) -> tuple[str, ...]:
    ratio = "-" if result.ratio is None else f"{result.ratio:.2f}x"
    target = "-" if result.target is None else f"<= {result.target:.2f}x"
    return (result.name, value(result.nbic, result.unit), value(result.peer, result.unit),
            ratio, target, result.met)


def text_table(results: list[Result]) -> str:
    rows = [HEADER, *map(row, results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def head() -> str:
    return run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture=True).strip()


def markdown(results: list[Result], skipped: list[str], started_at: str, n: int) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = head()
    if commit != started_at:
        commit = f"{commit} (HEAD moved from {started_at} during the run)"
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "nbic"], capture=True)
    out = [
        "# Benchmarks",
        "",
        "Measured by `bench/run` (ratios are nbic / peer; lower is better).",
        "",
        f"- date: {now}",
        f"- commit: {commit}" + (" (nbic/ had uncommitted changes)" if dirty.strip() else ""),
        f"- machine: {os.cpu_count()} cores, kernel {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- wall time: best of {n} runs with `time.perf_counter` (after one untimed "
        "warm-up run, unless a note says otherwise); where a note says \"in turn\", "
        "nbic and its peers ran round by round, so a change in the machine's load "
        "reached both",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row(r)) + " |"
            for r in results]
    if skipped:
        out += ["", "Not measured: " + "; ".join(skipped) + "."]
    out += ["", "## Commands", ""]
    for r in results:
        out += [f"### {r.name}", ""]
        for who, cmd in (("nbic", r.nbic_cmd), ("peer", r.peer_cmd)):
            if cmd:
                out += [f"{who}:", "", "```", cmd, "```", ""]
        out += [f"- {note}" for note in r.notes]
        if r.error:
            out.append(f"- FAILED: {r.error.strip()}")
        out.append("")
    out += ["## The tracing workloads", "",
            "Each runs as the session's `--script`; the in-session seconds are its own.", ""]
    for name, body in (("file-heavy", bench_trace.FILE_HEAVY),
                       ("python-import", bench_trace.PYTHON_IMPORT)):
        out += [f"{name}:", "", "```sh", body.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--level19", action="store_true",
                        help="also pack at zstd level 19 (slow; one run each)")
    parser.add_argument("-n", type=int, default=REPEAT, help="runs per measurement")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    workdir()
    started_at = head()
    results: list[Result] = []
    skipped = [] if args.level19 else ["pack at zstd level 19 (slow; `bench/run --level19`)"]
    for name, bench in benchmarks(args).items():
        if args.only and name not in args.only:
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            results += bench()
        except Exception as err:
            traceback.print_exc()
            results.append(Result(name, None, None, error=f"{type(err).__name__}: {err}"))
            skipped.append(f"{name} (failed: {type(err).__name__})")
    print(text_table(results))
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
        if r.error:
            print(f"  {r.name}: FAILED: {r.error.strip()}")
    if not args.no_doc:
        with open(DOC, "w") as doc:
            doc.write(markdown(results, skipped, started_at, args.n))
        print(f"wrote {DOC}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
