"""`llmeval report`: one self-contained HTML file, rendered for real in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_report_is_self_contained_and_escaped(project: Project) -> None:
    text = make_report(project).read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text  # nothing fetched
    assert "Paris &lt;b&gt;bold&lt;/b&gt;." in text  # answers are escaped, never rendered as markup
    assert 'id="pass-chart"' in text and 'class="latency"' in text
    assert text.count('class="suite-row"') == 1 and text.count('class="case"') == 3


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(project: Project, tmp_path: Path) -> None:
    report = make_report(project)
    profile = tmp_path / "profile"
    dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="gate-status">passed' in html or 'id="gate-status">failed' in html
    assert "<td>geo</td><td>openai/test-model</td>" in html and "Kyoto." in html
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
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
    import json

    from pytest_llmeval.report.html import render

    doc = json.loads((project.pytester.path / ".llmeval/results.json").read_text())
    text = render(doc, project.pytester.path)
    assert "gate-status" not in text and text.count('class="case"') == 3
