"""Documents into chunks: heading paths, line spans, overlap, fences, Python objects."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmeval.rag.chunking import chunk_file, chunk_markdown, chunk_python, chunk_text, iter_documents

MD = """---
title: front matter is skipped
---
# Install

Use pip.

## From source

Clone the repository.

```bash
git clone x
make install
```

Setext heading
--------------

Body under setext.
"""


def body_lines(text: str, chunk_text_: str) -> list[str]:
    return [line for line in chunk_text_.split("\n\n", 1)[-1].splitlines() if line.strip()]


def test_markdown_sections_heading_paths_and_line_spans() -> None:
    chunks = chunk_markdown(MD, "docs/install.md")
    titles = [c.title for c in chunks]
    assert titles == ["Install", "Install > From source", "Install > Setext heading"]
    lines = MD.splitlines()
    for c in chunks:
        assert c.text.startswith(c.title + "\n\n")
        span = lines[c.start_line - 1:c.end_line]
        for body in body_lines(MD, c.text):
            assert body in span, (body, c)
    fence = chunks[1]
    assert "git clone x\nmake install\n```" in fence.text  # the fenced block is whole
    assert "front matter" not in " ".join(c.text for c in chunks)


def test_long_sections_split_with_overlap_but_not_across_sections() -> None:
    paragraphs = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(12))
    text = f"# A\n\n{paragraphs}\n\n# B\n\nShort."
    chunks = chunk_markdown(text, "a.md", max_chars=600, overlap_chars=250)
    a_chunks = [c for c in chunks if c.title == "A"]
    assert len(a_chunks) > 2 and all(len(c.text) <= 600 + len("A\n\n") for c in a_chunks)
    for prev, nxt in zip(a_chunks, a_chunks[1:], strict=False):
        last_paragraph = prev.text.split("\n\n")[-1]
        assert last_paragraph in nxt.text  # overlap: the previous piece's last paragraph repeats
    assert [c.text for c in chunks if c.title == "B"] == ["B\n\nShort."]


def test_text_chunks_and_crlf_bom() -> None:
    chunks = chunk_text("\ufeffline one\r\nline two\r\n\r\nsecond paragraph\r\n", "notes.txt")
    assert chunks[0].text == "line one\nline two\n\nsecond paragraph" and chunks[0].start_line == 1
    assert chunks[0].end_line == 4


PY = '''"""Shapes module."""

import functools


class Sphere(Base, metaclass=Meta):
    """A round thing."""

    @functools.cache
    def area(self, scale: float = 1.0) -> float:
        """Surface area."""
        return 4.0

    def _private(self):
        return 1

    def public_undocumented(self, x):
        return x

    class Inner:
        """Nested."""


async def render(scene, *, size=(300, 300)) -> None:
    """Render asynchronously."""
'''


def test_python_objects_with_signatures_and_docstrings() -> None:
    chunks = {c.title: c for c in chunk_python(PY, "orbit/shapes.py")}
    assert set(chunks) == {"orbit.shapes", "orbit.shapes.Sphere", "orbit.shapes.Sphere.area",
                           "orbit.shapes.Sphere.public_undocumented", "orbit.shapes.Sphere.Inner",
                           "orbit.shapes.render"}
    assert "class Sphere(Base, metaclass=Meta):\nA round thing." in chunks["orbit.shapes.Sphere"].text
    area = chunks["orbit.shapes.Sphere.area"]
    assert "@functools.cache\ndef area(self, scale: float=1.0) -> float:\nSurface area." in area.text
    assert (area.start_line, area.end_line) == (9, 12)  # the decorator line included
    assert "async def render(scene, *, size=(300, 300)) -> None:" in chunks["orbit.shapes.render"].text
    assert chunk_python("def broken(:\n", "x.py")[0].kind == "text"  # a syntax error falls back to text


def test_ids_are_stable_and_distinct() -> None:
    first = [c.id for c in chunk_markdown(MD, "a.md")]
    assert first == [c.id for c in chunk_markdown(MD, "a.md")] and len(set(first)) == len(first)
    assert first != [c.id for c in chunk_markdown(MD, "b.md")]


def test_iter_documents_skips_hidden_venv_binary_and_escaping_links(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\nx\n")
    (root / "sub" / "b.py").write_text('"""B."""\n')
    (root / ".hidden").mkdir()
    (root / ".hidden" / "c.md").write_text("# C\n")
    (root / ".venv").mkdir()
    (root / ".venv" / "d.py").write_text("x = 1\n")
    (root / "image.png").write_bytes(b"\x89PNG\0\0")
    (tmp_path / "secret.md").write_text("# secret\n")
    (root / "link.md").symlink_to(tmp_path / "secret.md")
    found = [p.relative_to(root).as_posix() for p in iter_documents(root)]
    assert found == ["a.md", "sub/b.py"]
    assert chunk_file(root / "image.png", root) == []
    assert chunk_file(root / "sub" / "b.py", root)[0].source == "sub/b.py"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["# T", "## U", "", "```", "- item"]),
                          st.text(alphabet="abc xyz.", min_size=1, max_size=120)), max_size=60))
def test_markdown_spans_within_the_file_and_every_body_line_covered(lines: list[str]) -> None:
    text = "\n".join(lines)
    chunks = chunk_markdown(text, "p.md", max_chars=300, overlap_chars=80)
    n = len(text.split("\n"))
    covered: set[int] = set()
    for c in chunks:
        assert 1 <= c.start_line <= c.end_line <= n
        covered.update(range(c.start_line, c.end_line + 1))
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip() and not line.startswith("#") and line.strip() != "```":
            assert i in covered, (i, line)
