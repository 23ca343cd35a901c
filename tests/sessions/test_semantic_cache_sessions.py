"""The semantic cache with the real embedding model and real diskcache: paraphrases served, meaning changes
guarded, partitions respected, concurrent writers, the IVF search, and whole sessions (--llm-cache=semantic)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import Project
from pytest_llmeval.cache import semantic
from pytest_llmeval.cache.semantic import SemanticCache, VectorSet, partition_key

P = partition_key(model="m", params={})


def test_paraphrase_hit_and_meaning_changes_missed(tmp_path: Path) -> None:
    cache = SemanticCache(tmp_path / "sem")
    cache.add(P, "What is the capital of France?", "k-france")
    cache.add(P, "Is Python a compiled language?", "k-python")
    hit = cache.lookup(P, "what's the capital city of France")
    assert hit is not None and hit.key == "k-france" and hit.similarity >= cache.threshold
    assert hit.request == "What is the capital of France?"
    assert cache.lookup(P, "What is the capital of Germany?") is None  # another entity
    assert cache.lookup(P, "Is Python not a compiled language?") is None  # negated
    assert cache.lookup(partition_key(model="other", params={}), "What is the capital of France?") is None
    assert cache.lookup(P, "Write a poem about the sea.") is None  # unrelated: below the threshold


def test_guard_rejections_are_counted_when_a_later_candidate_is_served(tmp_path: Path) -> None:
    cache = SemanticCache(tmp_path / "sem")
    cache.add(P, "What is the largest ocean on Earth?", "k-largest")
    cache.add(P, "What is the smallest ocean on Earth?", "k-smallest")
    hit = cache.lookup(P, "What's the smallest ocean on Earth?")
    assert hit is not None and hit.key == "k-smallest"


WRITER = """
import sys
from pathlib import Path
import numpy as np
from pytest_llmeval.cache.semantic import SemanticCache
cache = SemanticCache(Path(sys.argv[1]))
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(50):
    v = rng.standard_normal(384).astype(np.float32)
    cache.add("p", f"request {sys.argv[2]}-{i}", f"key-{sys.argv[2]}-{i}", vector=v / np.linalg.norm(v))
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "sem"), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    reader = SemanticCache(tmp_path / "sem")
    reader._sync()
    keys = set(reader._sets["p"].keys)
    assert len(keys) == 200 and keys == {f"key-{w}-{i}" for w in range(4) for i in range(50)}


def test_ivf_search_finds_near_duplicates_like_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "BRUTE_FORCE_MAX", 1000)
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((50, 64)).astype(np.float32)
    data = centers[rng.integers(0, 50, 20000)] + 0.6 * rng.standard_normal((20000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    vs = VectorSet(dim=64)
    for i, v in enumerate(data):
        vs.add(v, f"t{i}", f"k{i}")
    found = 0
    for i in rng.choice(20000, 200, replace=False):
        q = data[i] + 0.05 * rng.standard_normal(64).astype(np.float32)
        q /= np.linalg.norm(q)
        best = vs.search(q, k=1)[0]
        found += best[1] == i
        assert best[0] > 0.8
    assert found >= 196  # near-duplicates: the IVF probe finds what brute force finds
    assert vs._ivf is not None


SUITE = """\
suite: faq
params: {temperature: 0}
cases:
  - id: capital
    question: What is the capital of France?
    expect: [{contains: Paris}]
"""


def test_session_serves_a_paraphrase_from_the_semantic_cache(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.run("--llm-cache=semantic").assert_outcomes(passed=1)
    assert len(project.server.requests) == 1
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Could you tell me what the capital city of France is?"))
    result = project.run("--llm-cache=semantic")
    result.assert_outcomes(passed=1)
    assert len(project.server.requests) == 1  # served without calling the model
    result.stdout.fnmatch_lines(["faq [[]openai/test-model]: 1 answer(s) served by the semantic cache"])
    case = project.results()["cases"][0]
    assert case["cache"] == "semantic" and case["cached"] is True
    assert case["semantic_hit"]["request"] == "What is the capital of France?"
    assert case["semantic_hit"]["similarity"] >= 0.8
    # A question that means something else is asked for real.
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "What is not the capital of France?"))
    project.run("--llm-cache=semantic")
    assert len(project.server.requests) == 2
    # The exact cache alone never serves paraphrases.
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Tell me the capital city of France."))
    project.run()
    assert len(project.server.requests) == 3


def test_semantic_cache_respects_the_system_prompt_and_params(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.run("--llm-cache=semantic").assert_outcomes(passed=1)
    project.write("cases/faq.yaml", SUITE.replace("params: {temperature: 0}", "params: {temperature: 0.5}")
                  .replace("What is the capital of France?", "What's the capital city of France?"))
    project.run("--llm-cache=semantic")
    assert len(project.server.requests) == 2  # other params: another partition


def test_semantic_cache_never_serves_judges_or_repeats(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE.replace("expect: [{contains: Paris}]",
                                                  "expect: [{judge: {rubric: correctness, min: 5}}]"))
    project.server.answer("Answer to grade", '{"score": 9, "reason": "ok"}', model="openai/judge")
    project.server.answer("France", ["Paris.", "It is Paris."])
    project.run("--llm-cache=semantic", "--llm-judge=openai/judge", "--llm-repeat=2").assert_outcomes(passed=1)
    judge_calls = [r for r in project.server.requests if r["model"] == "judge"]
    assert len(judge_calls) == 2  # one per draw: the second answer is similar but judged for real
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?", "What's France's capital?")
                  .replace("expect: [{contains: Paris}]", "expect: [{judge: {rubric: correctness, min: 5}}]"))
    project.run("--llm-cache=semantic", "--llm-judge=openai/judge", "--llm-repeat=2")
    assert len([r for r in project.server.requests if r["model"] == "test-model"]) == 4  # repeats: real draws


def test_semantic_cache_under_xdist(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE + """\
  - id: ocean
    question: What is the largest ocean?
    expect: [{contains: Pacific}]
  - id: peak
    question: What is the highest mountain?
    expect: [{contains: Everest}]
""")
    project.server.answer("France", "Paris.")
    project.server.answer("ocean", "The Pacific.")
    project.server.answer("mountain", "Everest.")
    project.run("--llm-cache=semantic", "-n", "2").assert_outcomes(passed=3)
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Could you tell me the capital city of France?"))
    project.run("--llm-cache=semantic", "-n", "2").assert_outcomes(passed=1)
    assert len(project.server.requests) == 3


def test_bad_threshold_names_its_source(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    result = project.run("--llm-semantic-threshold=1.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Invalid semantic threshold '1.5' from command line --llm-semantic-threshold*"])
