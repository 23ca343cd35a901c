"""The HTML report at 1k / 10k / 100k synthetic case results: generation time, file size, and (with Debian's
chromium) the time the page takes to parse its payload and paint the first page of the matrix.

    PYTHONPATH=src python bench/bench_report.py [--sizes 1000,10000,100000] [--no-browser]

Each size is a run of two models over size/2 cases in 20 suites, with a baseline (a tenth of the cases flip),
tags, checks with reasons, answers of 40-400 characters (one in fifty over the report's text limit). Printed
against a baseline measured in the same process on the same document: the time to write results.json itself
(json.dumps, indented as aggregate writes it) and its size; for the browser, chromium's time on a blank page.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku"]
WORDS = "the capital answer model paris tokyo rome berlin because of this result is likely true false".split()


def synthetic(results: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A results.json document of ``results`` case results (two models) and the slim baseline it is gated on."""
    rnd = random.Random(seed)
    cases, base = [], []
    for i in range(results // len(MODELS)):
        suite = f"suite{i % 20:02d}"
        prompt = f"Question {i}: " + " ".join(rnd.choices(WORDS, k=rnd.randint(5, 30)))
        tags = [f"tag{i % 7}"] + (["slow"] if i % 11 == 0 else [])
        for model in MODELS:
            passed = rnd.random() < 0.8
            length = 3000 if rnd.random() < 0.02 else rnd.randint(8, 80)
            answer = " ".join(rnd.choices(WORDS, k=length))
            cases.append({"suite": suite, "case_id": f"case{i:06d}", "model": model,
                          "outcome": "passed" if passed else "failed", "kind": "qna", "file": f"cases/{suite}.yaml",
                          "line": 3 + i, "score": 1.0 if passed else 0.0, "prompt": prompt, "answer": answer,
                          "latency_s": round(rnd.lognormvariate(-0.5, 0.8), 3), "cost_usd": 0.00012,
                          "prompt_tokens": 40, "completion_tokens": length, "tags": tags,
                          "checks": [{"check": "contains", "passed": passed, "score": 1.0 if passed else 0.0,
                                      "reason": "found 'Paris'" if passed else "'Paris' not in the answer"}]})
            was = passed if rnd.random() < 0.9 else not passed
            base.append({"suite": suite, "model": model, "case": f"case{i:06d}",
                         "outcome": "passed" if was else "failed", "score": 1.0 if was else 0.0})
    suites = []
    for s in sorted({c["suite"] for c in cases}):
        for m in MODELS:
            rows = [c for c in cases if c["suite"] == s and c["model"] == m]
            p = sum(c["outcome"] == "passed" for c in rows)
            suites.append({"suite": s, "model": m, "cases": len(rows), "passed": p, "failed": len(rows) - p,
                           "error": 0, "pass_rate": p / len(rows), "pass_rate_ci": None, "mean_score": p / len(rows)})
    doc = {"schema_version": 2, "created_at": "2026-12-05T00:00:00Z",
           "run": {"models": MODELS, "cache": "off", "exit_status": 0},
           "gate": {"baseline": "baseline.json", "rules": [], "alpha": 0.05, "failed": False, "suites": []},
           "suites": suites, "cases": cases}
    return doc, {"baseline_version": 1, "cases": base}


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False)


def timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def chromium_ms(path: Path, chromium: str, profile: Path) -> tuple[float, int | None]:
    """Chromium's wall time to load and dump the page, and the page's own time to its first rendered matrix
    (``data-render-ms``: performance.now() after the first page was drawn)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--dump-dom"]
    t = time.perf_counter()
    out = subprocess.run([chromium, *flags, path.as_uri()], capture_output=True, text=True, timeout=600)
    wall = 1000 * (time.perf_counter() - t)
    found = re.search(r'data-render-ms="(\d+)"', out.stdout)
    return wall, int(found.group(1)) if found else None


def main() -> None:
    from pytest_llmeval.report.html import render

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    chromium = None if args.no_browser else shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blank = root / "blank.html"
        blank.write_text("<!doctype html><title>blank</title><p>blank</p>")
        print(f"{'results':>8} {'render s':>9} {'json.dumps s':>12} {'ratio':>6} {'report MiB':>10} "
              f"{'results.json MiB':>16} {'ratio':>6} {'DOM rows':>8} {'page ms':>8} {'chromium ms':>11} "
              f"{'blank ms':>8}")
        for n in (int(x) for x in args.sizes.split(",")):
            doc, baseline = synthetic(n)
            (root / "baseline.json").write_text(json.dumps(baseline))
            repeat = 3 if n <= 10_000 else 1
            t_render = timed(lambda d=doc: render(d, root), repeat)
            text = render(doc, root)
            raw = _dumps(doc)
            t_json = timed(lambda d=doc: _dumps(d), repeat)
            report = root / f"report-{n}.html"
            report.write_text(text, encoding="utf-8")
            size, raw_size = report.stat().st_size / 2**20, len(raw.encode()) / 2**20
            page = wall = blank_ms = float("nan")
            rows = "-"
            if chromium:
                blank_ms = statistics.median(chromium_ms(blank, chromium, root / "p0")[0] for _ in range(2))
                wall, first = chromium_ms(report, chromium, root / "p1")
                page = float(first) if first is not None else float("nan")
                dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                      f"--user-data-dir={root / 'p2'}", "--dump-dom", report.as_uri()],
                                     capture_output=True, text=True, timeout=600).stdout
                rows = str(html.unescape(dom).count('<tr class="row'))
            print(f"{n:>8} {t_render:>9.2f} {t_json:>12.2f} {t_render / t_json:>6.2f} {size:>10.1f} "
                  f"{raw_size:>16.1f} {size / raw_size:>6.2f} {rows:>8} {page:>8.0f} {wall:>11.0f} {blank_ms:>8.0f}")


if __name__ == "__main__":
    main()
