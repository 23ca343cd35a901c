"""The HTML report at 1k / 10k / 100k synthetic case results: generation time, file size, and (with Debian's
chromium) how long the page takes to draw its first page of the matrix, to paint, to search and to filter.

    PYTHONPATH=src python bench/bench_report.py [--sizes 1000,10000,100000] [--no-browser]

Each size is a run of two models over size/2 cases in 20 suites, with a baseline (a tenth of the outcomes
differ from it), tags, a check with its reason, answers of 8-80 words (one in fifty of 3,000 words, over the
report's text limit). Printed against baselines measured in the same process on the same document: the CPU time
to serialise results.json itself (json.dumps, indented as aggregate writes it) and its size; for the browser,
chromium's wall time on a blank page (its start-up). Columns: render s (CPU seconds to write the report),
dumps s, ratio; MiB (the report), json MiB (results.json), ratio; then in the page: DOM rows (rows drawn: one
page), drawn ms (from navigation to the first page of the matrix drawn), FCP ms (first contentful paint),
search ms (a search over every case), filter ms (an outcome filter), chromium s (the whole load and DOM dump,
which serialises the payload again), blank s.
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
    """Median CPU seconds of ``fn`` (CPU, not wall: the machine is shared)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


# Appended to the page: after its script drew the first page, time a search and a filter over every row, then
# (once Chromium painted) record the first contentful paint.
PROBE = """<script>(function () {
  const $ = id => document.getElementById(id), out = {};
  function set(id, value) { const el = $(id); el.value = value; el.dispatchEvent(new Event('change')); }
  let t = performance.now(); set('f-search', 'case0000'); out.search = performance.now() - t;
  set('f-search', '');
  t = performance.now(); set('f-outcome', '1'); out.filter = performance.now() - t;
  set('f-outcome', '');
  out.rows = document.querySelectorAll('#matrix tbody tr.row').length;
  out.render = +document.body.getAttribute('data-render-ms');
  document.body.setAttribute('data-bench', JSON.stringify(out));
  new PerformanceObserver(list => { for (const e of list.getEntries()) if (e.name === 'first-contentful-paint')
    document.body.setAttribute('data-fcp', e.startTime.toFixed(0)); }).observe({type: 'paint', buffered: true});
})();</script>"""


def chromium(path: Path, browser: str, profile: Path) -> tuple[float, dict[str, Any]]:
    """Chromium's wall time to load the page and dump its DOM, and what the page measured (PROBE)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=2000", "--dump-dom"]
    t = time.perf_counter()
    out = subprocess.run([browser, *flags, path.as_uri()], capture_output=True, text=True, timeout=600)
    wall = 1000 * (time.perf_counter() - t)
    tail = out.stdout[-4000:]  # the probe's attributes are on <body>, the page's last element
    bench = re.search(r'data-bench="([^"]*)"', out.stdout)
    fcp = re.search(r'data-fcp="(\d+)"', out.stdout)
    measured = json.loads(html.unescape(bench.group(1))) if bench else {"tail": tail}
    measured["fcp"] = int(fcp.group(1)) if fcp else None
    return wall, measured


def main() -> None:
    from pytest_llmeval.report.html import render

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    browser = None if args.no_browser else shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blank = root / "blank.html"
        blank.write_text("<!doctype html><title>blank</title><p>blank</p>")
        print(f"{'results':>8} {'render s':>9} {'dumps s':>8} {'ratio':>6} {'MiB':>6} {'json MiB':>9} {'ratio':>6} "
              f"{'DOM rows':>8} {'drawn ms':>8} {'FCP ms':>7} {'search ms':>9} {'filter ms':>9} {'chromium s':>10} "
              f"{'blank s':>7}")
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
            line = (f"{n:>8} {t_render:>9.2f} {t_json:>8.2f} {t_render / t_json:>6.2f} {size:>6.1f} {raw_size:>9.1f} "
                    f"{size / raw_size:>6.2f}")
            if browser:
                blank_s = statistics.median(chromium(blank, browser, root / "p0")[0] for _ in range(2)) / 1000
                probed = report.with_name(f"probed-{n}.html")
                probed.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
                wall, m = chromium(probed, browser, root / "p1")
                if "rows" not in m:
                    raise SystemExit(f"the page did not report: {m}")
                line += (f" {m['rows']:>8} {m['render']:>8.0f} {m['fcp'] if m['fcp'] is not None else '-':>7} "
                         f"{m['search']:>9.0f} {m['filter']:>9.0f} {wall / 1000:>10.1f} {blank_s:>7.1f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
