"""Pull code out of a model's answer: fenced blocks first (the case's language first), else plain code."""

from __future__ import annotations

import ast
import re

ALIASES = {
    "python": {"python", "py", "python3", "py3"},
    "c": {"c", "h"},
}
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)",
                    re.DOTALL | re.MULTILINE)
_C_START = re.compile(r"^\s*(#include|#define|(?:static\s+|const\s+|unsigned\s+)*"
                      r"(?:int|void|char|float|double|long|short|struct|size_t|bool)\b)")
_PY_START = re.compile(r"^(def |class |import |from \S+ import |@|if __name__|for |while |print\(|[A-Za-z_]\w* *=)")


def fenced_blocks(answer: str) -> list[tuple[str, str]]:
    """(tag, code) of every fenced block, in order; an unterminated last fence runs to the end."""
    return [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(answer)]


def extract_code(answer: str, language: str) -> str | None:
    """The program in ``answer`` for ``language`` (python or c), or None when there is none.

    Fenced blocks tagged with the language win (Python blocks are joined in order, since models often split
    a function and its usage; for C the longest block wins, as two blocks with ``main`` cannot be joined);
    then untagged blocks; then, with no fences at all, an answer that is plainly code (leading prose lines
    dropped).
    """
    aliases = ALIASES.get(language, {language})
    blocks = fenced_blocks(answer)
    tagged = [code for tag, code in blocks if tag in aliases]
    untagged = [code for tag, code in blocks if not tag]
    for group in (tagged, untagged):
        group = [g for g in group if g.strip()]
        if group:
            group = [g.strip("\n") for g in group]
            code = "\n\n".join(group) if language == "python" else max(group, key=len)
            return code.strip("\n") + "\n"
    if blocks:
        return None  # only blocks in other languages (a shell command, say): no program for us
    return _plain_code(answer, language)


def _plain_code(answer: str, language: str) -> str | None:
    lines = answer.strip("\n").splitlines()
    start_rx = _PY_START if language == "python" else _C_START
    for i, line in enumerate(lines):
        if not start_rx.match(line):
            continue
        code = "\n".join(lines[i:]).strip("\n") + "\n"
        if language == "python":
            if _is_python_program(code):
                return code
        elif "{" in code and "}" in code:
            return code
        return None
    return None


def _is_python_program(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    meaningful = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
                  ast.For, ast.While, ast.If, ast.With, ast.Try)
    return any(isinstance(node, meaningful) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))
               for node in tree.body)
