"""Zero-configuration `gradlint check` on the ecosystem corpus (benchmarks/ecosystem/).

For each [[model]] of benchmarks/ecosystem/manifest.toml, runs `gradlint check FILE --no-cache
--format json` from the file's repository folder (as a user would, with HF_HUB_OFFLINE=1) and
prints a markdown table: whether the file's main model was analyzed with real inputs (its report
exists, its status is ok, its analysis path is export, and it had example inputs), the exit code,
the reason when it was not, and the seconds. Standard library only.

    python benchmarks/ecosystem.py                      # every file
    python benchmarks/ecosystem.py --only nanogpt GPT   # files whose path contains, or whose main is, a NAME
    python benchmarks/ecosystem.py --jobs 1             # one file at a time (default: one per core)

Each file is still its own `gradlint check FILE` process, as a user or a pre-commit hook runs
it; ``--jobs`` only runs several of them side by side. The summary gives the wall time and the
sum of the per-file times.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import tomllib

CORPUS = Path(__file__).resolve().parent / "ecosystem"


def shorten(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    text = re.sub(r"(^|; )[\w./-]+\.py(:\d+)*: ", r"\1", text)  # the file is in the table already
    return text if len(text) <= n else text[: n - 1] + "…"


def kind_of(file: Path, name: str) -> str:
    """Whether ``name`` is a top-level function or class of ``file``."""
    for node in ast.parse(file.read_bytes()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return "function" if isinstance(node, ast.FunctionDef) else "class"
    return "unknown"


def run_one(entry: dict, gradlint: list[str], timeout: float) -> dict:
    slug, rel = entry["file"].split("/", 1)
    cmd = [*gradlint, "check", rel, "--no-cache", "--format", "json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=CORPUS / slug, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "seconds": time.perf_counter() - start, "analyzed": False,
                "inputs": "", "ok_targets": 0, "reason": f"killed after the {timeout:g} s timeout"}
    seconds = time.perf_counter() - start
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"rc": proc.returncode, "seconds": seconds, "analyzed": False, "inputs": "", "ok_targets": 0,
                "reason": shorten(f"no JSON on stdout: {last}")}
    targets = doc.get("targets", [])
    ok_targets = sum(1 for t in targets if t.get("status") == "ok")
    main = [t for t in targets if t.get("target", "").split("::")[-1] == entry["main"]]
    report = main[0] if main else None
    inputs = (report or {}).get("inputs") or ""
    analyzed = bool(report and report.get("status") == "ok" and report.get("analysis") == "export" and inputs)
    if analyzed:
        reason = ""
    elif report is None and any(t.get("status") != "ok" for t in targets):
        bad = next(t for t in targets if t.get("status") != "ok")
        reason = (bad.get("error") or bad.get("status") or "").split("\n")[0]
    elif report is None:
        mine = [n for n in doc.get("notes", []) if f"skipped {entry['main']}:" in n]
        others = ", ".join(t["target"].split("::")[-1] for t in targets) or "none"
        if mine:
            reason = mine[0].split("\n")[0]
        elif kind_of(CORPUS / entry["file"], entry["main"]) == "function":
            reason = f"{entry['main']} is a function, not a target without @gradlint.target"
        else:
            reason = f"no report or note for {entry['main']}"
        reason += f" (reports: {others})"
    elif report.get("status") != "ok":
        reason = (report.get("error") or report.get("status") or "").split("\n")[0]
    elif report.get("analysis") != "export":
        reason = f"analysis: {report.get('analysis')}"
    else:
        reason = "no example inputs"
    source = "inferred" if "inferred" in inputs else ("declared" if inputs else "")
    return {"rc": proc.returncode, "seconds": seconds, "analyzed": analyzed, "inputs": source,
            "ok_targets": ok_targets, "reason": shorten(reason), "version": doc.get("version")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only files whose manifest path contains NAME, or whose main model is NAME")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--gradlint", metavar="CMD", default=str(Path(sys.executable).parent / "gradlint"),
                        help="the gradlint command (default: the gradlint next to this Python)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file (default 600)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="files checked side by side, each in its own process (default: one per core)")
    args = parser.parse_args(argv)

    entries = tomllib.loads((CORPUS / "manifest.toml").read_text())["model"]
    if args.only:
        entries = [e for e in entries if any(n in e["file"] or n == e["main"] for n in args.only)]
    gradlint = shlex.split(args.gradlint)
    rows = []
    print("| file | main | analyzed | inputs | exit | reason when not | s |")
    print("|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        results = pool.map(lambda e: {"file": e["file"], "main": e["main"], **run_one(e, gradlint, args.timeout)},
                           entries)
        for r in results:
            rows.append(r)
            print(f"| {r['file']} | {r['main']} | {'yes' if r['analyzed'] else 'no'} | {r['inputs'] or '-'} "
                  f"| {'-' if r['rc'] is None else r['rc']} | {r['reason'].replace('|', '/')} | {r['seconds']:.1f} |",
                  flush=True)
    wall = time.perf_counter() - started
    n, done = len(rows), sum(r["analyzed"] for r in rows)
    silent = sum(1 for r in rows if r["rc"] == 0 and r["ok_targets"] == 0)
    total = sum(r["seconds"] for r in rows)
    print()
    print(f"main model analyzed with real inputs: {done}/{n} ({100 * done / max(n, 1):.0f}%)")
    print(f"runs that analyzed nothing and exited 0: {silent}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"wall time: {wall:.0f} s with {args.jobs} file(s) side by side; sum of per-file times: {total:.0f} s; "
          f"load average at the end {load:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "analyzed": done, "files": n,
                                               "silent_exit_0": silent, "seconds": total,
                                               "wall_seconds": wall, "jobs": args.jobs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
