"""Vision judges in whole sessions: generated programs write out.png, the scripted server plays both the model
under test and a vision model, and the request is checked to carry the very image the program wrote."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.vision import circle, square
from PIL import Image

from conftest import Project

VISION = "openai/vision-model"


# ------------------------------------------------------------------------------------------ sessions

CIRCLE = """```python
from PIL import Image, ImageDraw
im = Image.new("RGB", (200, 200), "white")
ImageDraw.Draw(im).ellipse((50, 50, 150, 150), fill="red")
im.save("out.png")
```"""
BLANK = """```python
from PIL import Image
Image.new("RGB", (200, 200), "white").save("out.png")
```"""
RENDER = """\
suite: render
kind: code
cases:
  - id: circle
    language: python
    prompt: Draw a red circle and save out.png.
    expect:
      - files: [out.png]
      - vision: {question: "Is there a red circle on a white background?", expect: yes}
      - vision: {question: "Is the background black?", expect: no}
  - id: hello
    language: python
    prompt: Print hello.
    expect: [{stdout: {equals: hello}}]
"""


def script_programs(project: Project, circle_code: str = CIRCLE) -> None:
    s = project.server
    s.answer("red circle", circle_code, model="test-model")
    s.answer("Print hello", "```python\nprint('hello')\n```", model="test-model")


def vision_requests(project: Project) -> list[dict]:
    return [r for r in project.server.requests if r["model"] == "vision-model"]


def test_full_run_judges_the_image_the_program_wrote(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("red circle on a white", '{"answer": "yes", "reason": "a red disc"}', model="vision-model")
    project.server.answer("background black", "No, it is white.", model="vision-model")
    result = project.run(f"--llm-vision={VISION}", "-rA")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "render [[]openai/test-model]: runs 100.0% (2/2); judged 100.0% (1/1)",
        "render:judged [[]openai/test-model]: vision (openai/vision-model): 2 question(s), 2 answered, 2 as expected;*",
        "PASSED cases/render.yaml::circle[[]openai/test-model]",
        "PASSED cases/render.yaml::circle:judged[[]openai/test-model]",
    ])
    doc = project.results()
    judged = next(c for c in doc["cases"] if c["suite"] == "render:judged")
    fast = next(c for c in doc["cases"] if c["suite"] == "render" and c["case_id"] == "circle")
    assert (judged["stage"], fast["stage"]) == ("judged", "runs")
    assert [q["answer"] for q in judged["vision"]] == ["yes", "no"]
    assert judged["vision"][0]["reason"] == "a red disc" and judged["vision_judge"]["calls"] == 2
    assert [c["check"] for c in fast["checks"]] == ["files", "image", "image"]  # the fast stage: pre-checks only
    # The request really carries the image the program wrote: decode the data URL, compare with the artifact.
    saved = project.pytester.path / judged["vision"][0]["image"]
    assert saved.is_file() and saved.parent.name == "judged-0" and ".llmeval/artifacts" in str(saved)
    requests = vision_requests(project)
    assert len(requests) == 2
    for request in requests:
        part = next(p for p in request["messages"][-1]["content"] if p["type"] == "image_url")
        header, data = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64" and base64.b64decode(data) == saved.read_bytes()
        assert request["temperature"] == 0
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(circle()))
    row = next(r for r in doc["suites"] if r["suite"] == "render:judged")
    assert row["stage"] == "judged" and row["vision"]["agreed"] == 2


def test_not_slow_runs_the_fast_evaluation_only(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    result = project.run(f"--llm-vision={VISION}", "-m", "not slow")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines([
        "render [[]openai/test-model]: runs 100.0% (2/2); judged: not run (those items are marked slow*"])
    assert vision_requests(project) == []
    only_vision = project.run(f"--llm-vision={VISION}", "-m", "vision")
    # The judged item alone; the unscripted judge says "I don't know." (no yes/no, twice): unscored.
    only_vision.assert_outcomes(passed=0, deselected=2)
    assert only_vision.parseoutcomes()["unscored"] == 1


def test_a_wrong_answer_fails_the_judged_item_only(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("red circle on a white", "No. The circle is blue.", model="vision-model")
    project.server.answer("background black", "No.", model="vision-model")
    result = project.run(f"--llm-vision={VISION}", "-k", "circle")
    result.assert_outcomes(passed=1, failed=1, deselected=1)
    result.stdout.fnmatch_lines([
        "*case circle (render.yaml:*) failed on openai/test-model",
        "*FAIL vision (score 0.00): 'Is there a red circle on a white background?': openai/vision-model said no, "
        "expected yes (The circle is blue)",
        "*ok   vision (score 1.00)*",
        "*render [[]openai/test-model]: runs 100.0% (1/1); judged 0.0% (0/1)",
    ])


def test_garbage_answers_are_retried_once_then_unscored(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("could not be used", "A lovely picture!", model="vision-model")
    project.server.answer("Question:", "It shows a shape.", model="vision-model")
    result = project.run(f"--llm-vision={VISION}", "-k", "circle")
    outcomes = result.parseoutcomes()
    assert outcomes.get("unscored") == 1 and outcomes.get("passed") == 1 and "failed" not in outcomes
    assert result.ret == 0
    requests = vision_requests(project)
    assert len(requests) == 4  # two questions, each asked twice
    retry = next(r for r in requests if len(r["messages"]) == 4)
    assert retry["messages"][2] == {"role": "assistant", "content": "It shows a shape."}
    assert "no yes/no answer found" in retry["messages"][3]["content"]
    judged = next(c for c in project.results()["cases"] if c["suite"] == "render:judged")
    assert judged["outcome"] == "unscored" and judged["score"] is None
    assert all(q["unscored"] and q["replies"] == ["It shows a shape.", "A lovely picture!"] for q in judged["vision"])


def test_a_failed_pre_check_never_calls_the_vision_model(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project, BLANK)
    result = project.run(f"--llm-vision={VISION}", "-k", "circle")
    result.assert_outcomes(failed=2, deselected=1)
    result.stdout.fnmatch_lines(["*FAIL vision (score 0.00): pre-check: image is blank: a single flat colour #ffffff"])
    assert vision_requests(project) == []


def test_without_a_vision_model_questions_are_skipped_and_pre_checks_still_run(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    result = project.run("-rs", "-k", "circle")
    result.assert_outcomes(passed=1, skipped=1, deselected=1)
    result.stdout.fnmatch_lines(["*no vision model configured: set --llm-vision=MODEL*(the pixel pre-checks passed)"])
    judged = next(c for c in project.results()["cases"] if c["suite"] == "render:judged")
    assert judged["outcome"] == "skipped" and [c.get("skipped") for c in judged["checks"]] == [None, True, True]
    assert judged["checks"][0]["passed"] and judged["artifacts"]["out.png"]
    # A broken image still fails the judged item without any vision model: it cannot pass whatever one says.
    script_programs(project, BLANK)
    project.server.reset()
    script_programs(project, BLANK)
    blank = project.run("--llm-cache=off", "-k", "circle")
    blank.assert_outcomes(failed=2, deselected=1)


def test_vision_calls_are_cached_on_image_question_and_model(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("Question:", "Yes.", model="vision-model")
    project.run(f"--llm-vision={VISION}", "-k", "circle")
    assert len(vision_requests(project)) == 2
    again = project.run(f"--llm-vision={VISION}", "-k", "circle")
    assert len(vision_requests(project)) == 2  # both answers from the cache
    assert next(c for c in project.results()["cases"] if c["suite"] == "render:judged")["vision_judge"]["cached"]
    again.assert_outcomes(passed=1, failed=1, deselected=1)  # "yes" to "Is the background black?" fails
    project.write("cases/render.yaml", RENDER.replace("Is the background black?", "Is the background dark?"))
    project.run(f"--llm-vision={VISION}", "-k", "circle")
    assert len(vision_requests(project)) == 3  # a new question: one new call
    project.server.answer("Question:", "No.", model="other-vision")
    project.run("--llm-vision=openai/other-vision", "-k", "circle")
    assert len([r for r in project.server.requests if r["model"] == "other-vision"]) == 2  # a new model


def test_vision_judging_under_xdist(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("red circle on a white", "Yes", model="vision-model")
    project.server.answer("background black", "No", model="vision-model")
    result = project.run(f"--llm-vision={VISION}", "-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["render [[]openai/test-model]: runs 100.0% (2/2); judged 100.0% (1/1)"])


def test_a_vision_model_without_a_key_is_a_usage_error(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    result = project.run("--llm-vision=anthropic/claude-3-5-sonnet-latest")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ANTHROPIC_API_KEY is not set*"])


def test_bad_vision_checks_are_case_file_errors(project: Project) -> None:
    project.write("cases/render.yaml", """\
suite: render
kind: code
cases:
  - id: nofile
    language: python
    prompt: Draw.
    expect:
      - vision: {question: "Is it red?"}
  - id: noref
    language: python
    prompt: Draw.
    expect:
      - files: [out.png]
      - vision: {question: "Is it red?", reference: missing.png}
  - id: badexpect
    language: python
    prompt: Draw.
    expect:
      - files: [out.png]
      - vision: {question: "Is it red?", expect: perhaps}
""")
    result = project.run()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([
        "*cases/render.yaml:8: cases[[]0].expect[[]0].vision: check 'vision' needs the image file: give file: out.png*",
        "*cases/render.yaml:14: cases[[]1].expect[[]1].vision.reference: reference image 'missing.png' not found*",
        "*cases/render.yaml:20: cases[[]2].expect[[]1].vision.expect: expected yes or no, got 'perhaps'*",
    ])


CALIBRATION = """\
suite: vision-cal
kind: calibration
expect:
  - vision: {min_size: 16}
cases:
  - {id: red-yes, image: img/red.png, question: "Is there a red circle?", verdict: "yes"}
  - {id: green-no, image: img/green.png, question: "Is there a red circle?", verdict: "no"}
  - {id: square-no, image: img/square.png, question: "Is there a circle?", verdict: "no"}
  - {id: blank-no, image: img/blank.png, question: "Is there a red circle?", verdict: "no"}
"""


def test_vision_calibration_on_labelled_images(project: Project) -> None:
    project.write("cases/cal.yaml", CALIBRATION)
    (project.pytester.path / "cases/img").mkdir()
    circle().save(project.pytester.path / "cases/img/red.png")
    circle("green").save(project.pytester.path / "cases/img/green.png")
    square().save(project.pytester.path / "cases/img/square.png")
    Image.new("RGB", (64, 64), "white").save(project.pytester.path / "cases/img/blank.png")
    # This judge says yes to everything: right on red, wrong on green and on the square.
    project.server.answer("Question:", "Yes.", model="vision-model")
    result = project.run(f"--llm-vision={VISION}")
    result.assert_outcomes(passed=2, failed=2)
    assert len(vision_requests(project)) == 3  # the blank image fails the pre-check: the model never sees it
    sent = {base64.b64decode(next(p for p in r["messages"][-1]["content"] if p["type"] == "image_url")
                             ["image_url"]["url"].split(",", 1)[1]) for r in vision_requests(project)}
    assert (project.pytester.path / "cases/img/green.png").read_bytes() in sent
    result.stdout.fnmatch_lines([
        "*calibration: asked 'Is there a red circle?' about img/green.png, the vision pipeline said yes, "
        "the human label is no",
        "vision-cal [[]openai/vision-model]: judge calibration on 4 example(s): agreement 50.0%*",
    ])
    cal = next(r for r in project.results()["suites"])["calibration"]
    assert cal["examples"] == 4 and cal["agreement"] == 0.5 and cal["verdict_accuracy"] == 0.5
    # Human yes/no/no/no against the pipeline's yes/yes/yes/no: chance agreement 0.375, kappa (0.5 - 0.375) / 0.625.
    assert cal["kappa"] == pytest.approx(0.2)
    blank = next(c for c in project.results()["cases"] if c["case_id"] == "blank-no")
    assert blank["calibration"]["judge_verdict"] == "no" and "blank" in blank["calibration"]["precheck"]


def test_vision_calibration_without_a_vision_model_is_skipped(project: Project) -> None:
    project.write("cases/cal.yaml", CALIBRATION)
    (project.pytester.path / "cases/img").mkdir()
    for name in ("red", "green", "square", "blank"):
        circle().save(project.pytester.path / f"cases/img/{name}.png")
    result = project.run("-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*no vision model configured: set --llm-vision=MODEL*"])
    doc = project.results()
    assert {c["model"] for c in doc["cases"]} == {"no-vision-model"} and doc["suites"][0]["skipped"] == 4
    project.write("cases/cal.yaml", CALIBRATION.replace("img/red.png", "img/nothere.png"))
    broken = project.run()
    broken.assert_outcomes(skipped=3, errors=1)
    broken.stdout.fnmatch_lines(["*cases/cal.yaml:6: cases[[]0].image: image 'img/nothere.png' not found*"])


HAND_WRITTEN = '''
import pytest
from PIL import Image, ImageDraw


def drawing():
    image = Image.new("RGB", (120, 120), "white")
    ImageDraw.Draw(image).ellipse((20, 20, 100, 100), fill="red")
    return image


@pytest.mark.vision_judge(question="Is there a red circle?", expect="yes")
@pytest.mark.vision_judge(question="Is it a photograph?", expect="no")
def test_render(vision_judge, tmp_path):
    path = tmp_path / "render.png"
    drawing().save(path)
    outcomes = vision_judge(path)
    assert [o.passed for o in outcomes] == [True, True]


@pytest.mark.vision_judge(question="Is there a red circle?")
def test_pil_image_wrong(vision_judge):
    vision_judge(Image.new("RGB", (64, 64), "black"))


def test_ad_hoc_question(vision_judge):
    outcomes = vision_judge(drawing(), question="Is there a red circle?", expect="yes", check=False)
    assert outcomes[0].passed and outcomes[0].details["answer"] == "yes"


def test_fast():
    assert True
'''


def test_marker_and_fixture_in_hand_written_tests(project: Project) -> None:
    project.write("test_render.py", HAND_WRITTEN)
    project.server.answer("red circle", "Yes, a red circle.", model="vision-model")
    project.server.answer("photograph", "No, a drawing.", model="vision-model")
    result = project.run(f"--llm-vision={VISION}", "test_render.py")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*vision judge: pre-check: image is blank: a single flat colour #000000*"])
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert [q["answer"] for q in cases["test_render"]["vision"]] == ["yes", "no"]
    assert Path(cases["test_render"]["vision"][0]["image"]).is_file()
    # The vision_judge marker makes a test slow: -m "not slow" leaves the fast test only.
    fast = project.run(f"--llm-vision={VISION}", "test_render.py", "-m", "not slow")
    fast.assert_outcomes(passed=2, deselected=2)


def test_hand_written_without_a_vision_model_skips_with_the_hint(project: Project) -> None:
    project.write("test_render.py", HAND_WRITTEN)
    result = project.run("test_render.py", "-rs")
    # test_render is skipped; the black image fails its pre-check regardless; check=False hands the skipped
    # outcome to the test, whose own assert then fails.
    result.assert_outcomes(passed=1, skipped=1, failed=2)
    result.stdout.fnmatch_lines(["*no vision model configured: set --llm-vision=MODEL*"])


def test_results_json_stays_plain_json(project: Project) -> None:
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("Question:", "Yes.", model="vision-model")
    project.run(f"--llm-vision={VISION}")
    text = (project.pytester.path / ".llmeval/results.json").read_text()
    assert "base64" not in text  # images are files under .llmeval/artifacts, never inlined in the results
    json.loads(text)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


def test_local_vision_model_end_to_end(project: Project, tiny_vlm: Path) -> None:
    """A transformers vision model from a directory (random weights: its answers are noise), loaded through the
    same path a user's SmolVLM or LLaVA directory takes, judges the program's image: no error, whatever it says."""
    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    result = project.run(f"--llm-vision=local-vision/{tiny_vlm}", "-k", "circle")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1 and "error" not in outcomes and "errors" not in outcomes
    judged = next(c for c in project.results()["cases"] if c["suite"] == "render:judged")
    assert judged["outcome"] in ("passed", "failed", "unscored")
    assert judged["vision_judge"]["model"] == f"local-vision/{tiny_vlm}" and judged["vision_judge"]["calls"] >= 2
    for question in judged["vision"]:
        assert question["model"] == f"local-vision/{tiny_vlm}" and question["replies"]
        assert all(isinstance(r, str) for r in question["replies"])
    assert vision_requests(project) == []  # nothing went to the server


def test_a_bad_local_vision_directory_is_a_usage_error(project: Project, tmp_path: Path) -> None:
    project.write("cases/render.yaml", RENDER)
    result = project.run(f"--llm-vision=local-vision/{tmp_path / 'nothing-here'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*local-vision/*nothing-here*"])


def test_html_report_shows_the_image_and_the_answers(project: Project) -> None:
    import subprocess
    import sys

    project.write("cases/render.yaml", RENDER)
    script_programs(project)
    project.server.answer("red circle on a white", "Yes, a red disc.", model="vision-model")
    project.server.answer("background black", "Yes <b>black</b>.", model="vision-model")
    project.run(f"--llm-vision={VISION}", "-k", "circle")
    out = project.pytester.path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report",
                           str(project.pytester.path / ".llmeval/results.json"), "-o", str(out)],
                          capture_output=True, text=True, cwd=project.pytester.path)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    judged = next(c for c in project.results()["cases"] if c["suite"] == "render:judged")
    png = (project.pytester.path / judged["vision"][0]["image"]).read_bytes()
    assert "data:image/png;base64," + base64.b64encode(png).decode() in text  # the render, inlined
    assert text.count('class="vision"') == 1 and "Is there a red circle on a white background?" in text
    assert "&lt;b&gt;black&lt;/b&gt;" in text  # the judge's reason, shown beside its answer ...
    assert "<b>black</b>" not in text  # ... escaped, never rendered as markup


REPO = Path(__file__).resolve().parents[2]
STRIPES = """```python
from PIL import Image, ImageDraw
im = Image.new("RGB", (300, 100))
d = ImageDraw.Draw(im)
for i, colour in enumerate(["red", "green", "blue"]):
    d.rectangle((i * 100, 0, i * 100 + 99, 99), fill=colour)
im.save("out.png")
```"""
SQUARE = """```python
from PIL import Image, ImageDraw
im = Image.new("RGB", (200, 200), "white")
ImageDraw.Draw(im).rectangle((50, 50, 150, 150), fill="blue")
im.save("out.png")
```"""


def test_the_shipped_example_suites_fast_and_full(project: Project) -> None:
    """cases/render.yaml and cases/vision_calibration.yaml as shipped: right programs pass the pre-checks
    (the square against its reference image), `-m "not slow"` runs the fast evaluation, the full run adds the
    judge, and the calibration suite measures the judge on the labelled images."""
    import shutil

    for name in ("render.yaml", "vision_calibration.yaml", "render"):
        src, dst = REPO / "cases" / name, project.pytester.path / "cases" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    s = project.server
    s.answer("filled red circle", CIRCLE, model="test-model")
    s.answer("filled blue square", SQUARE.replace('fill="blue"', 'fill="navy"'), model="test-model")
    s.answer("vertical stripes", STRIPES.replace('"green", "blue"', '"blue", "green"'), model="test-model")
    s.answer("background black", "No.", model="vision-model")
    s.answer("red, green and blue", "No, the order is red, blue, green.", model="vision-model")
    s.answer("Is there a circle", "No.", model="vision-model")
    s.answer("Question:", "Yes.", model="vision-model")
    fast = project.run(f"--llm-vision={VISION}", "-m", "not slow")
    fast.assert_outcomes(passed=3, deselected=8)
    fast.stdout.fnmatch_lines(["render [[]openai/test-model]: runs 100.0% (3/3); judged: not run*"])
    assert vision_requests(project) == []
    full = project.run(f"--llm-vision={VISION}")
    full.stdout.fnmatch_lines([
        "render [[]openai/test-model]: runs 100.0% (3/3); judged 66.7% (2/3)",
        "vision-calibration [[]openai/vision-model]: judge calibration on 5 example(s): agreement 80.0%*",
    ])
    doc = project.results()
    square = next(c for c in doc["cases"] if c["suite"] == "render" and c["case_id"] == "blue-square")
    image_check = next(c for c in square["checks"] if c["check"] == "image")
    assert image_check["passed"] and image_check["details"]["distance"] <= 12  # navy, but the reference's shape
