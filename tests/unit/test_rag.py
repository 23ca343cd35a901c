"""Retrieval with the real embedding model and real lancedb: indexes, incremental rebuilds, retrieval scores
and the augmented prompt."""

from __future__ import annotations

from pathlib import Path

from helpers.rag import DOCS, write_docs

from pytest_llmeval.rag.index import DocIndex, augment, retrieval_scores


def test_build_search_and_incremental_rebuilds(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    index = DocIndex(docs, base_dir=tmp_path / "index")
    first = index.build()
    assert first.rebuilt and first.files == 3 and first.embedded_chunks == first.chunks > 3
    hits = index.search("How do I change the radius of a sphere?", k=2)
    assert hits[0].source == "sphere.md" and hits[0].n == 1 and hits[0].score > hits[1].score
    assert "radii" in hits[0].text and hits[0].start_line >= 1
    assert index.search("save a PNG image of the scene", k=1)[0].source == "api/window.py"
    # Nothing changed: nothing embedded, same version.
    again = DocIndex(docs, base_dir=tmp_path / "index").build()
    assert not again.rebuilt and again.embedded_chunks == 0 and again.version == first.version
    assert again.chunks == first.chunks
    # One file changed, one removed, one added: only those are (re)embedded; the version moves.
    (docs / "sphere.md").write_text(DOCS["sphere.md"] + "\n## Colour\n\nThe `colors` argument sets colours.\n")
    (docs / "install.md").unlink()
    (docs / "cube.md").write_text("# Cubes\n\n`orbit.actor.cube(centers, size=1.0)` draws cubes.\n")
    third = DocIndex(docs, base_dir=tmp_path / "index").build()
    assert (third.changed_files, third.removed_files, third.unchanged_files) == (2, 1, 1)
    assert third.version != first.version
    sources = {h.source for h in DocIndex(docs, base_dir=tmp_path / "index").search("install orbit3d", k=10)}
    assert "install.md" not in sources and "cube.md" in sources
    info = DocIndex(docs, base_dir=tmp_path / "index").info()
    assert info["exists"] and info["files"] == 3 and info["version"] == third.version


def test_index_at_another_uri_and_another_model_is_rebuilt(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    elsewhere = tmp_path / "shared" / "orbit.lance"
    index = DocIndex(docs, uri=str(elsewhere), base_dir=tmp_path / "index")
    assert index.build().chunks > 0
    assert (elsewhere).is_dir() and not (tmp_path / "index" / index.name).exists()
    assert DocIndex(docs, uri=str(elsewhere)).build(force=True).rebuilt


def test_retrieval_scores() -> None:
    from pytest_llmeval.rag.index import Retrieved

    hits = [Retrieved(i, src, 1, 2, 0.9 - i / 10, "t") for i, src in enumerate(["a.md", "b.md", "c.md"], start=1)]
    scores = retrieval_scores(hits, ["docs/b.md", "docs/x.md"], prefix="docs")
    assert scores["recall_at_k"] == 0.5 and scores["mrr"] == 0.5 and scores["first_relevant_rank"] == 2
    assert retrieval_scores(hits, ["docs/z.md"], prefix="docs/")["mrr"] == 0.0
    prompt = augment("Q?", hits[:1], prefix="docs")
    assert "[1] docs/a.md:1-2\nt" in prompt and prompt.endswith("Q?")
