"""Retrieval with the real embedding model and real lancedb, in whole processes: concurrent builders, retrieval
in cases (references, recall@k, MRR, cache keys), the rag fixture and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.rag import DOCS, write_docs

from conftest import Project

BUILD = """
import sys
from pathlib import Path
from pytest_llmeval.rag.index import DocIndex
stats = DocIndex(Path(sys.argv[1]), base_dir=Path(sys.argv[2])).build()
print(stats.chunks, stats.embedded_chunks)
"""


def test_concurrent_builders_do_not_duplicate_chunks(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(docs), str(tmp_path / "index")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    totals = {int(o[0]) for o in outputs}
    embedded = sorted(int(o[1]) for o in outputs)
    assert len(totals) == 1  # everyone sees the same index ...
    assert embedded[0] == embedded[1] == 0 and embedded[2] == totals.pop()  # ... built exactly once


RAG_SUITE = """\
suite: docs-bot
retrieve: {docs: docs/, k: 2}
params: {temperature: 0}
cases:
  - id: radius
    question: How do I change the radius of a sphere?
    sources: [docs/sphere.md]
    expect: [{contains: radii}]
  - id: headless
    question: How do I render without a display?
    reference: Set ORBIT_OFFSCREEN=1.
    sources: [docs/install.md, docs/api/window.py]
    expect: [{contains: ORBIT_OFFSCREEN}, {judge: {rubric: groundedness, min: 6}}]
"""


def test_suite_with_retrieval_end_to_end(project: Project) -> None:
    write_docs(project.pytester.path / "cases" / "docs")
    project.write("cases/rag.yaml", RAG_SUITE)
    s = project.server
    s.answer("Answer to grade", '{"score": 9, "reason": "Supported by [1]."}', model="openai/judge")
    s.answer("radius of a sphere", "Use the radii argument [1].")
    s.answer("without a display", "Set ORBIT_OFFSCREEN=1 [1].")
    result = project.run("--llm-judge=openai/judge")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["docs-bot [[]openai/test-model]: retrieval over 2 case(s) with expected sources: "
                                 "recall@2 *, MRR *"])
    request = next(r for r in s.requests if "radius of a sphere" in r["messages"][-1]["content"]
                   and r["model"] == "test-model")
    prompt = request["messages"][-1]["content"]
    assert prompt.startswith("Answer using the numbered references below.")
    assert "[1] docs/sphere.md:" in prompt and "radii" in prompt and prompt.endswith("radius of a sphere?")
    # The groundedness judge received the retrieved context.
    judged = next(r for r in s.requests if r["model"] == "judge")["messages"][-1]["content"]
    assert "Context:\n[1] docs/" in judged and "ORBIT_OFFSCREEN" in judged
    doc = project.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    radius = cases["radius"]
    assert radius["references"][0]["source"] == "docs/sphere.md" and radius["references"][0]["n"] == 1
    assert {"start_line", "end_line", "score"} <= set(radius["references"][0])
    assert radius["retrieval"]["recall_at_k"] == 1.0 and radius["retrieval"]["mrr"] == 1.0
    assert radius["retrieval"]["version"] and radius["retrieval"]["k"] == 2
    row = doc["suites"][0]["retrieval"]
    assert row["cases"] == 2 and 0 < row["recall_at_k"] <= 1 and 0 < row["mrr"] <= 1
    # Editing a document changes the index version, which is part of the cache key: the model is asked again.
    before = len(s.requests)
    project.run("--llm-judge=openai/judge").assert_outcomes(passed=2)
    assert len(s.requests) == before  # unchanged docs: all from the cache
    (project.pytester.path / "cases/docs/install.md").write_text(DOCS["install.md"] + "\nAlso see the FAQ.\n")
    project.run("--llm-judge=openai/judge").assert_outcomes(passed=2)
    assert len(s.requests) > before


def test_retrieval_under_xdist(project: Project) -> None:
    write_docs(project.pytester.path / "cases" / "docs")
    project.write("cases/rag.yaml", RAG_SUITE)
    project.server.answer("Answer to grade", '{"score": 9, "reason": "ok"}')
    project.server.answer("radius of a sphere", "Use the radii argument [1].")
    project.server.answer("without a display", "Set ORBIT_OFFSCREEN=1 [1].")
    project.run("-n", "2").assert_outcomes(passed=2)
    assert project.results()["suites"][0]["retrieval"]["cases"] == 2


def test_bad_retrieval_settings_are_case_file_errors(project: Project) -> None:
    project.write("cases/rag.yaml", """\
retrieve: {docs: nowhere/, k: 2}
cases:
  - {id: a, question: "Q?", expect: [{contains: x}]}
""")
    project.write("cases/src.yaml", """\
cases:
  - id: b
    question: "Q?"
    sources: [docs/a.md]
    expect: [{contains: x}]
""")
    result = project.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*cases/rag.yaml:1: retrieve.docs: docs folder 'nowhere/' not found (relative to rag.yaml)",
        "*cases/src.yaml:4: cases[[]0].sources: sources need retrieval*",
    ])


def test_rag_fixture_for_hand_written_tests(pytester: pytest.Pytester) -> None:
    write_docs(pytester.path / "docs")
    pytester.makeini("[pytest]\nllmeval_rag_docs = docs\n")
    pytester.makepyfile(test_docs=textwrap.dedent("""
        def test_search(rag):
            hits = rag.search("How do I change the radius of a sphere?", k=2)
            assert [h.n for h in hits] == [1, 2]
            assert hits[0].source == "sphere.md" and "radii" in hits[0].text and 0 < hits[0].score <= 1

        def test_other_folder(rag, tmp_path):
            (tmp_path / "faq.md").write_text("# FAQ\\n\\nThe answer to everything is 42.\\n")
            assert rag.open(tmp_path).search("what is the answer to everything", k=1)[0].source == "faq.md"
    """))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_cli_index_build_info_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first build through the installed entry point (a process of its own), the rest through the same main()
    in this process (the embedding model loads once)."""
    from pytest_llmeval.cli.main import main

    docs = write_docs(tmp_path / "docs")
    where = ["--dir", str(tmp_path / "idx")]
    built = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "index", "build", str(docs), *where],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert "rebuilt docs-" in built.stdout and "3 files (3 changed, 0 removed)" in built.stdout

    def run(*args: str) -> str:
        assert main(["index", *args]) == 0
        return capsys.readouterr().out

    assert "0 embedded" in run("build", str(docs), *where)
    info = json.loads(run("info", str(docs), *where))
    assert info["exists"] and info["files"] == 3 and info["chunks"] > 0
    search = run("search", str(docs), "radius of a sphere", "-k", "1", *where)
    assert search.startswith("[1] ") and "sphere.md" in search
    with pytest.raises(SystemExit) as exited:
        main(["index", "build", str(tmp_path / "nope")])
    assert exited.value.code == 2 and "docs folder not found" in capsys.readouterr().err
