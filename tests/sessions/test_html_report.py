"""`llmeval report`: one self-contained HTML file, rendered for real in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SUITE = """\
suite: geo
cases:
  - {id: fr, question: "Capital of France?", expect: [{contains: Paris}]}
  - {id: jp, question: "Capital of Japan?", expect: [{contains: Tokyo}]}
  - {id: it, question: "Capital of Italy?", expect: [{contains: Rome}]}
"""


def make_report(project: Project) -> Path:
    project.write("cases/geo.yaml", SUITE)
    s = project.server
    s.answer("France", "Paris <b>bold</b>.")
    s.answer("Japan", "Tokyo.")
    s.answer("Italy", "Rome.")
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    s.reset()
    s.answer("France", "Paris <b>bold</b>.")
    s.answer("Japan", "Kyoto.")
    s.answer("Italy", "Rome.")
    project.run("--llm-baseline=b.json", "--llm-cache=off")
    out = project.pytester.path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report",
                           str(project.pytester.path / ".llmeval/results.json"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def payload(text: str) -> dict[str, Any]:
    """The report's embedded data (report/matrix.py's payload), as the page's script reads it."""
    found = re.search(r'<script type="application/json" id="llmeval-data">(.*?)</script>', text, re.S)
    assert found, "no data payload"
    return json.loads(found.group(1))


def probe(tmp_path: Path, text: str, script: str, name: str = "probe", fragment: str = "") -> dict[str, Any]:
    """Open a copy of the report in headless Chromium with ``script`` appended (run after the report's own
    script drew the page; it returns an object); return that object, with the page's script errors and console
    lines under ``errors`` and ``console``."""
    page = tmp_path / f"{name}.html"
    body = ("<script>(function () { let out; try { out = (function () {" + script + "})(); } catch (e) { "
            "out = {exception: String(e && e.stack || e)}; } out.errors = window.__errors; "
            "document.body.setAttribute('data-probe', JSON.stringify(out)); })();</script>")
    page.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", body + "</body>", 1))
    dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}",
                          "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri() + fragment],
                         capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, dom.stdout[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    return result


def test_report_is_self_contained_and_escaped(project: Project) -> None:
    text = make_report(project).read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text  # nothing fetched
    assert text.lower().count("<script") == 2  # the data and the page's own script, inline
    assert "<b>bold</b>" not in text and "Paris \\u003cb\\u003ebold" in text  # answers are data, never markup
    assert 'id="pass-chart"' in text and 'class="latency chart"' in text
    assert text.count('class="suite-row"') == 1
    data = payload(text)
    assert [data["S"][i] for i in data["rows"]["id"]] == ["jp", "fr", "it"]  # the flipped case first
    assert data["rows"]["flip"] == [1, 0, 0] and data["baseline"] is True
    assert "Paris <b>bold</b>." in data["S"]
    assert '<b id="n-regressed">1</b> pass → fail' in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(project: Project, tmp_path: Path) -> None:
    report = make_report(project)
    result = probe(tmp_path, report.read_text(), """
      const rows = [...document.querySelectorAll('#matrix tbody tr.row')];
      const first = rows[0].querySelectorAll('td');
      rows[1].click();  // fr: its prompt and answer, shown as text
      const panel = document.querySelector('#matrix tr.detail .panel');
      return {gate: document.getElementById('gate-status').textContent, rows: rows.length,
              first: [...first].map(td => td.textContent),
              answer: panel.querySelector('pre.answer').textContent,
              prompt: document.querySelector('#matrix tr.detail pre.prompt').textContent,
              bold: panel.querySelectorAll('b').length - 1,
              axes: [...document.querySelectorAll('svg .axis-label')].map(t => t.textContent),
              ticks: document.querySelectorAll('#pass-chart .tick').length};""")
    assert result["errors"] == [] and result["console"] == []
    assert result["gate"] in ("passed", "failed") and result["rows"] == 3
    assert result["first"] == ["1", "geo :: jp", "failed 0.00↓ was passed", "passed"]  # vs the baseline
    assert result["answer"] == "Paris <b>bold</b>." and result["bold"] == 0  # no <b> but the "answer" label
    assert result["prompt"].endswith("Capital of France?")
    assert result["axes"] == ["pass rate (% of graded cases)", "latency (seconds, log scale)", "cases"]
    assert result["ticks"] >= 6  # 0% .. 100% and the suite's label
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,900", report.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1200, 900)
    low, high = image.getextrema()
    assert high - low > 100  # text and bars on the page, not a blank render


def test_report_without_a_gate(project: Project) -> None:
    project.write("cases/geo.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.run()

    from pytest_llmeval.report.html import render

    doc = json.loads((project.pytester.path / ".llmeval/results.json").read_text())
    text = render(doc, project.pytester.path)
    data = payload(text)
    assert "gate-status" not in text and len(data["rows"]["id"]) == 3
    assert data["baseline"] is False and "baseline-col" not in text.split("<script>")[0]
    assert "no baseline" in text


def test_report_against_a_baseline_named_on_the_command_line(project: Project) -> None:
    """`llmeval report --baseline FILE` compares a run that had no gate with a baseline of the user's choosing; a
    baseline that cannot be read is a usage error naming it."""
    project.write("cases/geo.yaml", SUITE)
    s = project.server
    for country, city in (("France", "Paris."), ("Japan", "Tokyo."), ("Italy", "Rome.")):
        s.answer(country, city)
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    s.reset()
    for country, city in (("France", "Paris."), ("Japan", "Kyoto."), ("Italy", "Rome.")):
        s.answer(country, city)
    project.run("--llm-cache=off")  # no --llm-baseline: results.json names no baseline
    root = project.pytester.path

    def report(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report",
                               str(root / ".llmeval/results.json"), "-o", str(root / "r.html"), *extra],
                              capture_output=True, text=True)

    assert report().returncode == 0
    assert payload((root / "r.html").read_text())["baseline"] is False
    done = report("--baseline", str(root / "b.json"))
    assert done.returncode == 0, done.stderr
    data = payload((root / "r.html").read_text())
    assert data["baseline"] is True and [data["S"][i] for i in data["rows"]["id"]][0] == "jp"
    assert data["rows"]["flip"][0] == 1  # passed in b.json, fails now
    missing = report("--baseline", str(root / "nope.json"))
    assert missing.returncode == 2 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr


# --- application targets: references, the app's own calls, metadata, transcripts (issue 17) ---

XSS_ANSWER = 'Set it [1]. </script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
LONG_TEXT = "Set ORBIT_OFFSCREEN=1 to render offscreen. " * 40 + "</details></li></ol><b>not bold</b>"


def _case(case_id: str, **extra: object) -> dict[str, object]:
    return {"suite": "bot", "case_id": case_id, "model": "openai/test-model", "outcome": "passed", "kind": "qna",
            "file": "cases/bot.yaml", "line": 3, "score": 1.0, "checks": [], "latency_s": 0.4, "calls": 1,
            "target": "python:bot:answer", **extra}


def app_results() -> dict[str, object]:
    """A results.json as a run with a Python target and a conversation suite writes it."""
    references = [{"n": 1, "source": "docs/install.md", "text": LONG_TEXT, "score": 0.91, "title": "Install"},
                  {"n": 2, "source": "docs/sphere.md", "text": "<img src=x onerror=\"window.__pwned = 3\">radii",
                   "score": 0.5}]
    usage = {"calls": 2, "prompt_tokens": 120, "completion_tokens": 30, "cost_usd": 0.00123, "latency_s": 0.8,
             "cached": False}
    transcript = {
        "turns": [
            {"turn": 0, "user": "How do I render offscreen?", "answer": "Set ORBIT_OFFSCREEN=1 [1].",
             "references": [{"n": 1, "source": "docs/install.md", "text": "ORBIT_OFFSCREEN=1", "score": 0.9}],
             "usage": {"calls": 1, "prompt_tokens": 50, "completion_tokens": 9, "cost_usd": None,
                       "latency_s": 0.2}},
            {"turn": 1, "user": "And on <b>Windows</b>?", "answer": "The same </script><script>window.__pwned = 4"
             "</script> [1].", "references": [], "usage": None},
        ],
        "ended": "goal", "simulated": True, "closing": "Thanks, that works.",
        "simulated_user": {"model": "openai/user-model", "calls": 3},
    }
    cases = [
        _case("offscreen", prompt="How do I render offscreen?", answer=XSS_ANSWER, references=references,
              retrieval={"k": 2, "recall_at_k": 0.5, "mrr": 1.0,
                         "expected": ["docs/install.md", "docs/missing.md"]},
              app_usage=usage, metadata={"route": "docs", "note": "</script><script>window.__pwned = 5</script>"}),
        _case("chat", suite="chat", prompt="How do I render offscreen?", answer=transcript["turns"][1]["answer"],
              transcript=transcript, app_usage=usage),
        {**_case("plain"), "suite": "geo", "target": None, "answer": "Paris."},
    ]
    app_calls = {"target": "python:bot:answer", "cases": 1, "calls": 2, "prompt_tokens": 120,
                 "completion_tokens": 30, "cost_usd": 0.00123, "latency_s": 0.8}

    def row(suite: str, **extra: object) -> dict[str, object]:
        return {"suite": suite, "model": "openai/test-model", "cases": 1, "passed": 1, "failed": 0, "error": 0,
                "pass_rate": 1.0, "pass_rate_ci": [0.2, 1.0], "mean_score": 1.0, "cost_usd": None, **extra}

    return {"schema_version": 2, "created_at": "2026-12-05T00:00:00Z",
            "run": {"models": ["openai/test-model"], "cache": "off", "exit_status": 0},
            "suites": [row("bot", app_calls=app_calls), row("chat", app_calls={**app_calls, "calls": 5}),
                       row("geo")],
            "cases": cases}


def render_app_report(tmp_path: Path) -> Path:
    results = tmp_path / ".llmeval" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(app_results()))
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report", str(results), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def template(text: str, case_id: str) -> str:
    """The server-rendered drill-down of a case (its <template>, cloned when its row is opened)."""
    data = payload(text)
    row = [data["S"][i] for i in data["rows"]["id"]].index(case_id)
    k = data["cells"]["x"][data["rows"]["first"][row]]
    assert k >= 0, f"{case_id} has no drill-down"
    return text.split(f'<template id="x-{k}">')[1].split("</template>")[0]


def test_references_app_usage_metadata_and_transcript_are_shown_escaped(tmp_path: Path) -> None:
    text = render_app_report(tmp_path).read_text()
    assert text.lower().count("<script") == 2  # the data and the page's script: every other one escaped
    assert "<img" not in text and "window.__pwned" in text  # shown as text, never as markup
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned = 1&lt;/script&gt;" not in text  # the answer is data ...
    assert XSS_ANSWER in payload(text)["S"]  # ... read back whole by the page's script, shown with textContent
    assert "&lt;/details&gt;&lt;/li&gt;&lt;/ol&gt;&lt;b&gt;not bold&lt;/b&gt;" in text  # a reference's text
    # The suite table: a target column, the application's calls per suite.
    assert '<td class="target">python:bot:answer</td>' in text and '<td class="target">model</td>' in text
    assert text.count('class="app-calls"') == 2
    assert "answered 1 case(s) and made 2 model calls · 120 + 30 tokens · $0.0012 · 0.80 s of its own" in text
    # The drill-down: references numbered with their scores, the long text folded, expected marked.
    offscreen = template(text, "offscreen")
    assert "python:bot:answer" in payload(text)["S"]  # the target, shown in the case's panel
    assert '<li value="1" class="reference is-expected">[1] docs/install.md · Install' in offscreen
    assert '<li value="2" class="reference">[2] docs/sphere.md' in offscreen and "(score 0.910)" in offscreen
    assert '<details class="ref-text"><summary>text (' in offscreen
    assert "recall@2 0.50 · MRR 1.00" in offscreen
    assert '<span class="expected">docs/install.md (found)</span>' in offscreen
    assert '<span class="missed">docs/missing.md (missed)</span>' in offscreen
    assert "the application's own model calls: 2 model calls · 120 + 30 tokens" in offscreen
    assert ('<pre class="metadata">{&#34;note&#34;: &#34;&lt;/script&gt;&lt;script&gt;window.__pwned = 5'
            in offscreen)
    # The conversation: user and assistant bubbles per turn, the turn's references, the ending.
    chat = template(text, "chat")
    assert chat.count('class="bubble user"') == 2 and chat.count('class="bubble assistant"') == 1 + 1
    assert "And on &lt;b&gt;Windows&lt;/b&gt;?" in chat and "Thanks, that works." in chat
    assert '<li value="1" class="reference">[1] docs/install.md' in chat and "1 model call · 50 + 9 tokens" in chat
    assert "ended: the simulated user reached its goal" in chat
    assert "simulated user: {&#34;calls&#34;: 3, &#34;model&#34;: &#34;openai/user-model&#34;}" in chat
    # A bare model's case has no drill-down beyond its answer: no target, no transcript.
    data = payload(text)
    assert data["cells"]["x"] == [0, 1, -1] and data["cells"]["target"][2] == -1
    assert text.count("<template ") == 2


def test_a_python_targets_references_and_usage_reach_the_report(project: Project,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from test_targets_sessions import _setup

    _setup(project, monkeypatch)
    project.run().assert_outcomes(passed=2)
    from pytest_llmeval.report.html import render

    text = render(project.results(), project.pytester.path)
    assert '<td class="target">python:bot:answer</td>' in text and text.count('class="app-calls"') == 1
    offscreen = template(text, "offscreen")
    assert '<li value="1" class="reference is-expected">[1] docs/install.md' in offscreen
    assert "Set ORBIT_OFFSCREEN=1 to render offscreen." in offscreen  # the reference's text, folded
    assert "the application's own model calls: 1 model call · " in offscreen
    assert "&#34;route&#34;: &#34;docs&#34;" in offscreen
    assert '<span class="expected">docs/install.md (found)</span>' in offscreen


# Recorded from the start of the page: its script errors.
PROBE_HEAD = "<script>window.__errors = []; addEventListener('error', e => __errors.push(String(e.message)));</script>"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_transcript_shows_when_its_case_is_expanded_in_headless_chromium(tmp_path: Path) -> None:
    # The transcript is not in the page until its case is opened (a click on its row), then shown; nothing
    # injected through an answer, a reference or metadata ran or became an element.
    text = render_app_report(tmp_path).read_text()
    result = probe(tmp_path, text, """
      function shown(el) {
        const r = el.getBoundingClientRect(); return el.checkVisibility() && r.width > 0 && r.height > 0; }
      const before = document.querySelectorAll('.bubble').length;
      const rows = [...document.querySelectorAll('#matrix tbody tr.row')];
      rows[1].click();
      const chat = document.querySelector('#matrix tr.detail .chat');
      const after = shown(chat.querySelector('.bubble.assistant')), bubbles = chat.querySelectorAll('.bubble').length;
      document.querySelector('#matrix tbody tr.row').click();  // the offscreen case too: its answer, as text
      const answer = document.querySelector('#matrix tr.detail pre.answer').textContent;
      return {before, after, bubbles, answer,
              details: document.querySelectorAll('#matrix tr.detail').length, pwned: window.__pwned || 0,
              imgs: document.querySelectorAll('img').length, scripts: document.querySelectorAll('script').length,
              refs: document.querySelectorAll('#matrix li.reference').length};""")
    assert result == {"before": 0, "after": True, "bubbles": 5, "answer": XSS_ANSWER, "details": 2, "pwned": 0,
                      "imgs": 0, "scripts": 4, "refs": 3, "errors": [], "console": []}


# --- scale: 20,000 results (10,000 cases x 2 models), paged and filtered in the page ---

N_CASES = 10_000
XSS_IN_ANSWER = "zebra-4321 </script><script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"


def large_results(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run of two models over N_CASES cases in five suites and three tags, with a baseline. Model a fails
    every tenth case, model b every seventh; in the baseline every case passed except b's every fourteenth."""
    cases, base = [], []
    for i in range(N_CASES):
        for model, fails in (("a", i % 10 == 0), ("b", i % 7 == 0)):
            answer = XSS_IN_ANSWER if (i, model) == (4321, "b") else f"answer {i} of {model}"
            if (i, model) == (5, "a"):
                answer = "long " * 1000
            cases.append({"suite": f"s{i % 5}", "case_id": f"case{i:06d}", "model": model, "kind": "qna",
                          "outcome": "failed" if fails else "passed", "score": 0.0 if fails else 1.0,
                          "prompt": f"question {i}", "answer": answer, "latency_s": 0.05 + (i % 50) / 10,
                          "tags": [f"t{i % 3}"], "checks": [{"check": "contains", "passed": not fails,
                                                             "score": 0.0 if fails else 1.0, "reason": "r"}]})
            base.append({"suite": f"s{i % 5}", "model": model, "case": f"case{i:06d}",
                         "outcome": "failed" if model == "b" and i % 14 == 0 else "passed"})
    (tmp_path / "baseline.json").write_text(json.dumps({"baseline_version": 1, "cases": base}))
    rows = [{"suite": f"s{s}", "model": m, "cases": N_CASES // 5, "pass_rate": 0.9} for s in range(5) for m in "ab"]
    doc = {"schema_version": 2, "created_at": "2026-12-05T00:00:00Z", "run": {"models": ["a", "b"], "cache": "off",
                                                                               "exit_status": 0},
           "gate": {"baseline": "baseline.json", "failed": False, "suites": []}, "suites": rows, "cases": cases}
    return doc, {"baseline_version": 1, "cases": base}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_twenty_thousand_results_page_and_filter_in_headless_chromium(tmp_path: Path) -> None:
    from pytest_llmeval.report.html import render

    doc, _ = large_results(tmp_path)
    text = render(doc, tmp_path)
    # Expected from the definition of the run, independently of the report's code.
    # (b failed on every fourteenth case before and fails now: no fail -> pass flip.)
    regressed = [i for i in range(N_CASES) if i % 10 == 0 or (i % 7 == 0 and i % 14 != 0)]
    disagree = [i for i in range(N_CASES) if (i % 10 == 0) != (i % 7 == 0)]
    in_s2_t1 = [i for i in range(N_CASES) if i % 5 == 2 and i % 3 == 1]
    result = probe(tmp_path, text, """
      const $ = id => document.getElementById(id);
      const info = () => $('page-info').textContent;
      const rows = () => [...document.querySelectorAll('#matrix tbody tr.row')];
      const ids = () => rows().map(r => r.querySelector('td.case-id b').textContent);
      function set(id, value) { const el = $(id); el.value = value; el.dispatchEvent(new Event('change')); }
      const out = {};
      out.first = {info: info(), rows: rows().length, ids: ids().slice(0, 3),
                   trs: document.querySelectorAll('#matrix tr').length,
                   flips: rows().filter(r => r.classList.contains('flipped')).length};
      $('next').click();
      out.next = {info: info(), n: rows()[0].firstChild.textContent};
      set('f-flipped', 'regressed');
      out.regressed = {info: info(), allDown: rows().every(r => r.querySelector('.flip.down') !== null)};
      set('f-flipped', 'disagree');
      out.disagree = info();
      set('f-flipped', '');
      set('f-model', '0'); set('f-outcome', '1');
      out.aFailed = {info: info(), cols: document.querySelectorAll('#matrix th.model-col').length,
                     allFailed: rows().every(r => r.querySelector('td.cell').classList.contains('o-failed'))};
      set('f-model', ''); set('f-outcome', '');
      set('f-suite', '2'); set('f-tag', '1');
      out.suiteTag = {info: info(), ok: rows().every(r => r.querySelector('.suite').textContent === 's2'
                                                     && r.querySelector('.tag').textContent === 't1')};
      set('f-suite', ''); set('f-tag', '');
      set('f-search', 'ZEBRA-4321');
      out.search = {info: info(), ids: ids()};
      rows()[0].click();
      const answers = [...document.querySelectorAll('#matrix tr.detail pre.answer')].map(p => p.textContent);
      out.xss = {answers, pwned: window.__pwned || 0, imgs: document.querySelectorAll('#matrix img').length};
      set('f-search', 'case000005');
      rows()[0].click();
      out.cut = document.querySelector('#matrix tr.detail .cut').textContent;
      set('f-search', '');
      set('f-size', '200');
      $('last').click();
      out.last = {info: info(), rows: rows().length, trs: document.querySelectorAll('#matrix tr').length};
      out.axes = [...document.querySelectorAll('svg .axis-label')].map(t => t.textContent);
      return out;""", "large")
    assert result["errors"] == [] and result["console"] == [], result
    assert "exception" not in result, result
    assert result["first"] == {"info": f"1–50 of {N_CASES} matching case(s) ({N_CASES} in all) · page 1 of 200",
                               "rows": 50, "ids": [f"case{i:06d}" for i in regressed[:3]], "trs": 1 + 50,
                               "flips": 50}  # the DOM holds one page, not 10,000 rows; flipped first
    assert result["next"] == {"info": f"51–100 of {N_CASES} matching case(s) ({N_CASES} in all) · page 2 of 200",
                              "n": "51"}
    assert result["regressed"] == {"info": f"1–50 of {len(regressed)} matching case(s) ({N_CASES} in all) · page 1 "
                                           f"of {-(-len(regressed) // 50)}", "allDown": True}
    assert result["disagree"].startswith(f"1–50 of {len(disagree)} matching")
    assert result["aFailed"] == {"info": f"1–50 of {N_CASES // 10} matching case(s) ({N_CASES} in all) · page 1 of "
                                         f"{N_CASES // 10 // 50}", "cols": 1, "allFailed": True}
    assert result["suiteTag"]["info"].startswith(f"1–50 of {len(in_s2_t1)} matching") and result["suiteTag"]["ok"]
    assert result["search"] == {"info": f"1–1 of 1 matching case(s) ({N_CASES} in all) · page 1 of 1",
                                "ids": ["case004321"]}
    assert result["xss"] == {"answers": ["answer 4321 of a", XSS_IN_ANSWER], "pwned": 0, "imgs": 0}
    assert result["cut"] == " … [cut at 2000 of 5000 characters; the full text is in results.json]"
    assert result["last"] == {"info": f"9801–{N_CASES} of {N_CASES} matching case(s) ({N_CASES} in all) · page 50 of "
                                      "50", "rows": 200, "trs": 1 + 200}
    assert result["axes"] == ["pass rate (% of graded cases)", "latency (seconds, log scale)", "cases",
                              "latency (seconds, log scale)", "cases"]


# --- two models (--llm a --llm b) against a baseline: the matrix side by side ---


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_two_models_side_by_side_against_the_baseline(project: Project, tmp_path: Path) -> None:
    project.write("cases/geo.yaml", SUITE)
    s = project.server
    for model in ("openai/test-model", "openai/other"):
        s.answer("France", "Paris.", model=model)
        s.answer("Japan", "Tokyo.", model=model)
        s.answer("Italy", "Rome.", model=model)
    project.run("--llm=openai/other", "--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off")
    s.reset()
    s.answer("France", "Paris.")
    s.answer("Japan", "Kyoto.", model="openai/test-model")  # test-model regresses on jp
    s.answer("Japan", "Tokyo.", model="openai/other")
    s.answer("Italy", "Rome.", model="openai/test-model")
    s.answer("Italy", "Milan <script>window.__pwned = 1</script>", model="openai/other")  # other regresses on it
    project.run("--llm=openai/other", "--llm-baseline=b.json", "--llm-cache=off")
    out = project.pytester.path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report",
                           str(project.pytester.path / ".llmeval/results.json"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = probe(tmp_path, out.read_text(), """
      const $ = id => document.getElementById(id);
      const rows = () => [...document.querySelectorAll('#matrix tbody tr.row')];
      const cells = () => rows().map(r => [...r.querySelectorAll('td')].slice(1).map(td => td.textContent));
      function set(id, value) { const el = $(id); el.value = value; el.dispatchEvent(new Event('change')); }
      const out = {head: [...document.querySelectorAll('#matrix thead th')].map(th => th.textContent),
                   all: cells()};
      rows()[0].click();  // it: the two answers side by side
      out.panels = [...document.querySelectorAll('#matrix tr.detail .panel')].map(p =>
        [p.querySelector('h4').textContent, p.querySelector('pre.answer').textContent]);
      set('f-model', '1'); set('f-outcome', '1');
      out.otherFailed = cells();
      set('f-model', ''); set('f-outcome', ''); set('f-search', 'kyoto');
      out.kyoto = cells();
      out.hash = location.hash;
      out.pwned = window.__pwned || 0;
      return out;""", "two")
    assert result["errors"] == [] and result["console"] == [], result
    assert result["head"] == ["#", "case", "openai/test-model", "openai/other", "baseline"]
    both = "openai/test-model: passedopenai/other: passed"
    assert result["all"] == [["geo :: itmodels disagree", "passed 1.00", "failed 0.00↓ was passed", both],
                             ["geo :: jpmodels disagree", "failed 0.00↓ was passed", "passed 1.00", both],
                             ["geo :: fr", "passed 1.00", "passed 1.00", both]]  # results.json's order within
    assert result["panels"] == [["openai/test-model passed", "Rome."],
                                ["openai/other failed↓ was passed", "Milan <script>window.__pwned = 1</script>"]]
    assert result["otherFailed"] == [["geo :: itmodels disagree", "failed 0.00↓ was passed", "openai/other: passed"]]
    assert result["kyoto"] == [result["all"][1]] and result["pwned"] == 0
    assert result["hash"] == "#q=kyoto"  # the view is in the address ...
    linked = probe(tmp_path, out.read_text(), """
      return {model: document.getElementById('f-model').value, flipped: document.getElementById('f-flipped').value,
              rows: [...document.querySelectorAll('#matrix tbody tr.row td.case-id b')].map(b => b.textContent)};""",
                   "linked", "#model=openai%2Fother&flipped=regressed&outcome=bogus")
    assert linked == {"model": "1", "flipped": "regressed", "rows": ["it"], "errors": [], "console": []}  # ... and back
