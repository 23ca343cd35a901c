"""The ``cites`` check: does the answer cite its sources?

A citation is a ``[n]`` marker (also ``[n, m]``, ``[n-m]``, ``[1, 3-4]``), ``n`` the 1-based rank of a reference, or a
reference's source written in the answer: its path (``docs/install.md``) or its file name (``install.md``).
Markers inside code (fenced blocks, inline backticks) are not citations: ``items[1]`` in a snippet cites nothing.

The references are the ones the application answered with (``GradeContext.references``, in its order); a model
under built-in retrieval (no application references) is graded against the chunks put into its prompt, which
``rag.index.references_block`` numbers the same way.

- ``{cites: true}``: at least one reference is cited and no marker points past the references (``[7]`` with three
  references is an invented citation, and fails);
- ``{cites: [docs/install.md, api.py]}`` or ``{cites: {sources: [...], min: 0.5}}`` (without ``sources``: the
  case's own ``sources:`` when it has them): the listed sources must be cited, matched like recall@k
  (``os.path.normpath``) and also by path suffix on either side, so ``install.md`` matches ``docs/install.md``;
  score = share cited, passes at ``min`` (default 1.0) with no invented marker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

NAME = "cites"
NO_REFERENCES = "the target returned no references to cite"
MIN_NAME_LENGTH = 3  # a shorter source id ("1", "a") would be "mentioned" by almost any answer: markers only

# [1], [1, 2], [1-3], [1–3], [1,3-4]; not [] nor [a]. Markdown links [text](url) hold no digits-only text.
_MARKER = re.compile(r"\[\s*\d+\s*(?:[,;\-–]\s*\d+\s*)*\]")
_PART = re.compile(r"(\d+)\s*(?:[-–]\s*(\d+))?")
_FENCED = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE = re.compile(r"`[^`\n]*`")


class CitesParams(CheckParams):
    sources: list[str] | None = None  # what must be cited (default: the case's sources:, else any reference)
    min: float = Field(default=1.0, ge=0.0, le=1.0)  # share of the sources that must be cited

    @field_validator("sources", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list) and (not v or any(not isinstance(s, str) or not s.strip() for s in v)):
            raise ValueError("expected a source path or a non-empty list of source paths")
        return v


@dataclass(frozen=True)
class _Ref:
    n: int  # what [n] cites
    source: str


def _references(ctx: GradeContext | None) -> list[_Ref]:
    """The application's references, numbered 1..; else the built-in retrieval's hits, numbered by their rank."""
    if ctx is None:
        return []
    if ctx.references:
        return [_Ref(i, str(getattr(r, "source", r))) for i, r in enumerate(ctx.references, start=1)]
    retrieve = getattr(ctx.case, "retrieve", None) or {}
    prefix = str(retrieve.get("prefix") or "")
    return [_Ref(int(h.n), _join(prefix, str(h.source))) for h in ctx.retrieved]


def _join(prefix: str, source: str) -> str:
    # as rag.index names a hit in the prompt's references block and in retrieval_scores
    return f"{prefix.rstrip('/')}/{source}" if prefix and prefix != "." else source


def _norm(path: str) -> str:
    return os.path.normpath(path.strip()).replace("\\", "/")


def _same_source(expected: str, source: str) -> bool:
    """Equal after normpath, or one is a path suffix of the other (``install.md`` ~ ``docs/install.md``)."""
    a, b = _norm(expected), _norm(source)
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def _prose(answer: str) -> str:
    """The answer without its code (blanked, so that positions and word boundaries stay as they were)."""
    blank = lambda m: " " * len(m.group(0))  # noqa: E731
    return _INLINE.sub(blank, _FENCED.sub(blank, answer))


def _markers(text: str, numbers: set[int]) -> tuple[set[int], list[str]]:
    """The reference numbers the ``[n]`` markers cite, and the markers (as written) that point to no reference."""
    cited: set[int] = set()
    invalid: list[str] = []
    for m in _MARKER.finditer(text):
        bad = False
        for part in _PART.finditer(m.group(0)[1:-1]):
            lo = int(part.group(1))
            hi = int(part.group(2)) if part.group(2) else lo
            if hi < lo or hi - lo > len(numbers):  # [5-3], or a range wider than the references: no citation
                bad = True
                continue
            span = set(range(lo, hi + 1))
            cited |= span & numbers
            bad = bad or not span <= numbers
        if bad and m.group(0) not in invalid:
            invalid.append(m.group(0))
    return cited, invalid


def _named(text: str, source: str) -> bool:
    """Whether the answer writes this source: its whole path, or its file name (one with an extension)."""
    names = {source.strip(), _norm(source)}
    base = os.path.basename(_norm(source))
    if base != _norm(source) and "." in base.strip("."):
        names.add(base)
    lowered = text.lower()
    for name in names:
        if len(name) < MIN_NAME_LENGTH:
            continue
        # not inside a longer name: "install.md" is not cited by "reinstall.md" nor by "install.md.bak"
        rx = rf"(?<![\w.\-]){re.escape(name.lower())}(?![\w\-]|\.\w)"
        if re.search(rx, lowered):
            return True
    return False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def grade_cites(answer: str, case: CaseSpec, p: CitesParams, ctx: GradeContext | None = None) -> CheckOutcome:
    refs = _references(ctx)
    if not refs:
        return CheckOutcome(NAME, False, 0.0, NO_REFERENCES, details={"cited": [], "missing": [], "invalid": []})
    text = _prose(answer)
    by_marker, invalid = _markers(text, {r.n for r in refs})
    cited_refs = [r for r in refs if r.n in by_marker or _named(text, r.source)]
    cited = list(dict.fromkeys(r.source for r in cited_refs))
    invented = ""
    if invalid:
        invented = (f"invented citation{'s' if len(invalid) > 1 else ''} {', '.join(invalid)}: "
                    f"there {'is' if len(refs) == 1 else 'are'} {_plural(len(refs), 'reference')}")

    expected: Sequence[str] = p.sources if p.sources is not None else tuple(getattr(case, "sources", ()) or ())
    if not expected:
        missing: list[str] = []
        passed = bool(cited) and not invalid
        if not cited:
            reason = (f"the answer cites none of its {_plural(len(refs), 'reference')} "
                      f"(no [n] marker, no source named)")
        else:
            reason = f"cited {', '.join(cited)}"
        score = 1.0 if passed else 0.0
    else:
        expected = list(dict.fromkeys(expected))
        found = [e for e in expected if any(_same_source(e, s) for s in cited)]
        missing = [e for e in expected if e not in found]
        score = len(found) / len(expected)
        passed = score >= p.min and not invalid
        parts = [f"cited {len(found)} of {_plural(len(expected), 'expected source')}"
                 + (f" (needs {p.min:.0%})" if p.min < 1.0 else "")]
        if found:
            parts.append(f"cited: {', '.join(found)}")
        if missing:
            absent = [m for m in missing if not any(_same_source(m, r.source) for r in refs)]
            parts.append("not cited: " + ", ".join(m + (" (not among the references)" if m in absent else "")
                                                    for m in missing))
        reason = "; ".join(parts)
    if invented:
        reason = f"{invented}; {reason}"
    return CheckOutcome(NAME, passed, score, reason,
                        details={"cited": cited, "missing": missing, "invalid": invalid})


CHECKS = [
    CheckDef(NAME, CitesParams, grade_cites, shorthand="sources", kinds=frozenset({"qna"}),
             doc="the answer cites its references ([n] markers or source names) and invents none; with sources "
                 "(or the case's sources:), score = share of them cited, passes at min (default 1.0)"),
]
