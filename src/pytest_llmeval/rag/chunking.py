"""Documents into chunks for retrieval: Markdown by headings, text by paragraphs, Python by object.

A chunk must make sense on its own in a prompt, so a Markdown chunk starts with its heading path ("Install >
From source") and a Python chunk is an object's signature with its docstring (seed 001 indexed a library's
docstrings). Every chunk keeps the 1-based line span it came from, for references ("docs/sphere.md:3-9").
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_INCLUDE = ("**/*.md", "**/*.markdown", "**/*.mdx", "**/*.rst", "**/*.txt", "**/*.py")
DEFAULT_EXCLUDE = ("__pycache__", ".git", "node_modules", ".venv", "venv", "build", "dist")
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
TEXT_SUFFIXES = (".txt", ".rst", ".text")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text (what is embedded and shown) and where it came from."""

    source: str  # relative to the docs root, POSIX separators
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str
    kind: str  # markdown | text | python
    title: str = ""

    @property
    def id(self) -> str:
        blob = f"{self.source}\0{self.start_line}\0{self.end_line}\0{self.text}"
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------------------------------ pieces


def _pieces(lines: list[tuple[int, str]], max_chars: int, overlap_chars: int) -> list[list[tuple[int, str]]]:
    """Split numbered lines into pieces of at most ``max_chars``, preferring paragraph breaks, keeping fenced
    code blocks whole where they fit, and repeating about ``overlap_chars`` of whole lines between pieces."""
    # Units: paragraphs (runs of non-blank lines) and whole fenced blocks.
    units: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    in_fence = False
    for number, line in lines:
        fence = line.lstrip().startswith(("```", "~~~"))
        if not in_fence and not line.strip():
            if current:
                units.append(current)
                current = []
            continue
        current.append((number, line))
        if fence:
            in_fence = not in_fence
    if current:
        units.append(current)
    # A unit longer than max_chars is split by lines (a single over-long line stays whole).
    small: list[list[tuple[int, str]]] = []
    for unit in units:
        if _size(unit) <= max_chars:
            small.append(unit)
            continue
        part: list[tuple[int, str]] = []
        for item in unit:
            if part and _size(part) + len(item[1]) + 1 > max_chars:
                small.append(part)
                part = []
            part.append(item)
        if part:
            small.append(part)
    pieces: list[list[tuple[int, str]]] = []
    piece: list[tuple[int, str]] = []
    for unit in small:
        if piece:
            unit = [(unit[0][0], ""), *unit]  # keep the paragraph break (a blank line) inside a piece
        if piece and _size(piece) + _size(unit) + 1 > max_chars:
            pieces.append(piece)
            tail: list[tuple[int, str]] = []
            for item in reversed(piece):  # overlap: whole lines from the end of the previous piece
                if _size(tail) + len(item[1]) + 1 > overlap_chars or _size(tail) + _size(unit) + len(item[1]) > max_chars:
                    break
                tail.insert(0, item)
            piece = tail
        piece = piece + unit
    if piece:
        pieces.append(piece)
    return pieces


def _size(lines: list[tuple[int, str]]) -> int:
    return sum(len(line) + 1 for _, line in lines)


def _text_of(lines: list[tuple[int, str]]) -> str:
    return "\n".join(line for _, line in lines).strip()


# ------------------------------------------------------------------------------------------ formats

_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^(=+|-+)\s*$")


def chunk_markdown(text: str, source: str, *, max_chars: int = 1200, overlap_chars: int = 200) -> list[Chunk]:
    """Sections by heading (ATX and setext), each split into pieces with overlap; front matter skipped."""
    lines = _normalise(text).split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            start = end + 1
    sections: list[tuple[list[str], list[tuple[int, str]]]] = []
    path: list[str] = []
    body: list[tuple[int, str]] = []
    in_fence = False
    i = start
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        heading = None
        if not in_fence:
            m = _ATX.match(line)
            if m:
                heading = (len(m.group(1)), m.group(2).strip())
            elif (i + 1 < len(lines) and line.strip() and _SETEXT.match(lines[i + 1])
                  and not line.lstrip().startswith(("-", "*", ">", "|"))):
                heading = (1 if lines[i + 1].strip().startswith("=") else 2, line.strip())
        if heading is not None:
            sections.append((list(path), body))
            level, title = heading
            path = path[:level - 1] + [""] * max(0, level - 1 - len(path)) + [title]
            body = []
            i += 2 if not _ATX.match(line) else 1
            continue
        body.append((i + 1, line))
        i += 1
    sections.append((list(path), body))
    out: list[Chunk] = []
    for heads, section in sections:
        if not any(line.strip() for _, line in section):
            continue
        title = " > ".join(h for h in heads if h)
        for piece in _pieces(section, max_chars, overlap_chars):
            body_text = _text_of(piece)
            if not body_text:
                continue
            nonblank = [n for n, line in piece if line.strip()]
            out.append(Chunk(source, nonblank[0], nonblank[-1], f"{title}\n\n{body_text}" if title else body_text,
                             "markdown", title or Path(source).name))
    return out


def chunk_text(text: str, source: str, *, max_chars: int = 1200, overlap_chars: int = 200) -> list[Chunk]:
    """Plain text: paragraphs packed into pieces with overlap."""
    lines = list(enumerate(_normalise(text).split("\n"), start=1))
    out = []
    for piece in _pieces(lines, max_chars, overlap_chars):
        body = _text_of(piece)
        if body:
            nonblank = [n for n, line in piece if line.strip()]
            out.append(Chunk(source, nonblank[0], nonblank[-1], body, "text", Path(source).name))
    return out


def _module_name(source: str) -> str:
    parts = list(Path(source).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or Path(source).stem


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    decorators = [f"@{ast.unparse(d)}" for d in node.decorator_list]
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        head = f"class {node.name}({', '.join(bases)}):" if bases else f"class {node.name}:"
    else:
        prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        head = f"{prefix} {node.name}({ast.unparse(node.args)}){returns}:"
    return "\n".join([*decorators, head])


def chunk_python(text: str, source: str, *, max_chars: int = 1200) -> list[Chunk]:
    """One chunk per module docstring, class and function/method: signature plus docstring.

    Objects without a docstring are indexed (signature only) when public; private ones without a docstring
    carry nothing worth retrieving. A file that does not parse is indexed as text.
    """
    text = _normalise(text)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return chunk_text(text, source, max_chars=max_chars)
    module = _module_name(source)
    out: list[Chunk] = []

    def emit(title: str, head: str, doc: str | None, start: int, end: int) -> None:
        body = f"{head}\n{doc.strip()}" if doc else head
        if len(body) <= max_chars or not doc:
            out.append(Chunk(source, start, end, f"{title}\n\n{body}", "python", title))
            return
        for piece in chunk_text(doc, source, max_chars=max(200, max_chars - len(head) - len(title) - 4)):
            out.append(Chunk(source, start, end, f"{title}\n\n{head}\n{piece.text}", "python", title))

    doc = ast.get_docstring(tree)
    if doc:
        end = tree.body[0].end_lineno or 1
        emit(module, f"module {module}", doc, 1, end)

    def walk(nodes: list[ast.stmt], prefix: str) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{node.name}"
                docstring = ast.get_docstring(node)
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if docstring or not node.name.startswith("_"):
                    emit(name, _signature(node), docstring, start, node.end_lineno or node.lineno)
                if isinstance(node, ast.ClassDef):
                    walk(node.body, name)

    walk(tree.body, module)
    return out


def _normalise(text: str) -> str:
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def chunk_file(path: Path, root: Path, *, max_chars: int = 1200, overlap_chars: int = 200) -> list[Chunk]:
    """Chunk one file by its suffix (Markdown, Python, text); other files give no chunks."""
    source = path.relative_to(root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    if b"\0" in raw[:4096]:
        return []  # binary
    text = raw.decode("utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return chunk_markdown(text, source, max_chars=max_chars, overlap_chars=overlap_chars)
    if suffix == ".py":
        return chunk_python(text, source, max_chars=max_chars)
    if suffix in TEXT_SUFFIXES:
        return chunk_text(text, source, max_chars=max_chars, overlap_chars=overlap_chars)
    return []


def iter_documents(root: Path, *, include: Sequence[str] = DEFAULT_INCLUDE,
                   exclude: Sequence[str] = DEFAULT_EXCLUDE) -> Iterator[Path]:
    """Files under ``root`` matching ``include``, sorted; hidden and excluded folders and links out skipped."""
    root = root.resolve()
    seen: set[Path] = set()
    for pattern in include:
        for path in root.glob(pattern):
            rel = path.relative_to(root)
            if any(part.startswith(".") or part in exclude for part in rel.parts[:-1]) or rel.name.startswith("."):
                continue
            if not path.is_file() or not path.resolve().is_relative_to(root):
                continue
            seen.add(path)
    yield from sorted(seen)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
