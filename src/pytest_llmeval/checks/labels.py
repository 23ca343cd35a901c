"""Multi-label grading: which of a case's allowed labels the model named, scored by Jaccard.

The ``labels`` kind follows the C clean-code classifier (each snippet gets the set of principles it breaks:
DRY, SRP, MC, NAME, NO_COMPILE): a case is scored by the Jaccard index of the predicted and expected label
sets, and a suite is summarised per label (the seed's "Jaccard per criterion" table) with precision, recall
and micro/macro averages, because one mean over cases hides the label the prompt is weak on (SRP there).

Models are asked for a JSON list, but small ones write bullets, prose or lower case and large ones add
fences, explanations and lead-ins; :func:`parse_labels` reads all of these so that the score measures the
classification, not the formatting.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

__all__ = ["CHECKS", "JaccardParams", "ParsedLabels", "aggregate_labels", "format_label_report", "jaccard",
           "label_report", "label_summary_lines", "labels_fields", "parse_labels"]


@dataclass(frozen=True)
class ParsedLabels:
    """What an answer says: allowed labels (canonical spelling, first-appearance order), label-like tokens
    that are not allowed (as written), and how the answer was read ("json", "list", "text" or "empty")."""

    labels: tuple[str, ...]
    unknown: tuple[str, ...] = ()
    format: str = "text"


# ------------------------------------------------------------------------------------------- parsing

_SEPARATORS = re.compile(r"[\s_\-]+")
# "None", "no labels apply", "N/A", ... once keyed (lower case, separators as "_"): an explicit empty answer.
_NONE_KEY = re.compile(r"(?:none(?:_of_(?:them|th(?:e|ese)(?:_labels?)?))?|n/?a|nil|null|nothing|empty"
                       r"|no_(?:labels?|violations?|issues?|problems?))(?:_(?:apply|applies|found|detected))?")
# The same in prose, for an answer with no list that still says it found nothing.
_NONE_PROSE = re.compile(r"\b(?:no\s+labels?|none\s+of\s+(?:the|these)\s+labels|no\s+violations?|no\s+issues?"
                         r"|n/a|no\s+labels?\s+appl(?:y|ies))\b|^\W*none\W*$", re.IGNORECASE | re.MULTILINE)
# A token that looks like a label: the only kind of unknown item reported (prose words are not labels).
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,39}")
_BULLET = re.compile(r"^\s*(?:[-*•+▪◦·‣]|\d{1,2}[.)]|\(\d{1,2}\)|[a-z][.)])\s+")
_MARKUP = re.compile(r"[*`~]")
_HEADING = re.compile(r"^\s*(?:#+|>+)\s*")
_PAREN = re.compile(r"\s*\([^()]*\)")
_NA = re.compile(r"\bn\s*/\s*a\b", re.IGNORECASE)
# An explanation after a label: "DRY - the loop ...", "SRP: does two things", "MC → 3.14 is magic".
_STRONG_CUT = re.compile(r"\s+[-–—]+\s+|\s*[–—]\s*|:(?=\s|$)|\s+=>?\s+|\s*(?:→|->)\s*")
# A weaker one, tried only inside a single item: "DRY. The loop ...", "SRP because ...".
_WEAK_CUT = re.compile(r"\.(?:\s|$)|\s+(?:because|since|due\s+to)\b", re.IGNORECASE)
_SPLIT = re.compile(r"\s*(?:,\s*(?:and|or|&)\s+|[,/|&]|\s(?:and|or)\s)\s*", re.IGNORECASE)
_ITEM_STRIP = " \t\"'`“”‘’«»[](){}<>.,;:!?_"
# "Labels: ...", "**Final answer:** ...", "The labels that apply are ...", "Violations found:".
_LEAD_IN = re.compile(
    r"(?P<pre>[^\S\n]{0,8}[>#*_]{0,6}[^\S\n]{0,8})"
    r"\b(?:(?:the|my|final|predicted|applicable|detected|violated)\s+)*"
    r"(?:answer|labels?|violations?|categories|category|classification|output|result|principles?)"
    r"(?:\s*\([^)\n]*\))?(?:\s+(?:that|which)\s+(?:apply|applies|are\s+violated|are\s+broken))?"
    r"(?:\s+(?:found|detected|identified))?"
    r"[^\S\n]*[*_]{0,4}[^\S\n]*(?P<sep>[:=]|\s+(?:are|is)\b:?)[^\S\n]*[*_]{0,4}[^\S\n]*(?P<rest>[^\n]*)",
    re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
# Code the model quotes back is not its answer (a C array "int a[]" is not an empty label list).
_CODE_FENCE = re.compile(r"```[ \t]*(?:c|cpp|c\+\+|cc|h|hpp)\b[^\n]*\n.*?(?:```|\Z)", re.IGNORECASE | re.DOTALL)
_DICT_KEYS = ("labels", "label", "answer", "answers", "categories", "violations", "predicted_labels",
              "predictions", "prediction", "result", "output", "classes", "tags", "principles")


def _key(text: str) -> str:
    """Case-, space-, '-' and '_'-insensitive form of a label, so "no-compile" and "NO_COMPILE" meet."""
    return _SEPARATORS.sub("_", text.strip().lower()).strip("_")


class _Items:
    """Items of one candidate list, sorted into labels, explicit "none" markers and unknown tokens."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.unknown: list[str] = []
        self.nones = 0

    def add(self, kind: str, value: str) -> None:
        if kind == "label" and value not in self.labels:
            self.labels.append(value)
        elif kind == "unknown" and _key(value) not in {_key(u) for u in self.unknown}:
            self.unknown.append(value)
        elif kind == "none":
            self.nones += 1

    @property
    def empty(self) -> bool:
        return not self.labels and not self.unknown


def _clean(item: str) -> str:
    item = item.strip().strip(_ITEM_STRIP).strip()
    return re.sub(r"^(?:and|or|&)\s+", "", item, flags=re.IGNORECASE).strip(_ITEM_STRIP)


def _classify(item: str, amap: dict[str, str], *, explicit: bool = False) -> tuple[str, str]:
    """("label", canonical) | ("none", "") | ("unknown", item) | ("prose", item) | ("skip", "").

    ``explicit`` items (strings of a JSON list) are unknown labels whatever they look like; in a plain-text
    list only a single label-like token is, so that a prose line never becomes an "unknown label".
    """
    item = _clean(item)
    if not item:
        return "skip", ""
    k = _key(item)
    if k in amap:
        return "label", amap[k]
    if _NONE_KEY.fullmatch(k):
        return "none", ""
    if explicit or _TOKEN.fullmatch(item):
        return "unknown", item
    return "prose", item


def _segment_items(segment: str, amap: dict[str, str]) -> list[tuple[str, str]] | None:
    """The items of one ';'-free piece of a line, or None when it is prose rather than a list."""
    cut = _STRONG_CUT.search(segment)
    if cut and cut.start() > 0:
        # "DRY - the loop is repeated, twice": the head names the label(s), the rest explains.
        head = [_classify(p, amap) for p in _SPLIT.split(segment[:cut.start()])]
        head = [h for h in head if h[0] != "skip"]
        if head and all(kind in ("label", "none") for kind, _ in head):
            return head
    out: list[tuple[str, str]] = []
    for part in _SPLIT.split(segment):
        weak = _WEAK_CUT.search(part)
        kind, value = _classify(part[:weak.start()] if weak and weak.start() > 0 else part, amap)
        if kind == "prose":
            return None
        if kind != "skip":
            out.append((kind, value))
    return out


def _line_items(line: str, amap: dict[str, str]) -> list[tuple[str, str]] | None:
    """The items of one line of a plain-text list (bullets, numbering, markup stripped), or None for prose."""
    line = _MARKUP.sub("", _HEADING.sub("", line))
    line = _BULLET.sub("", line, count=1)
    line = _PAREN.sub("", _NA.sub("none", line))
    out: list[tuple[str, str]] = []
    for segment in line.split(";"):
        items = _segment_items(segment, amap)
        if items is None:
            return None
        out += items
    return out


def _region(lines: Sequence[str], amap: dict[str, str]) -> _Items | None:
    """All of ``lines`` read as one list, or None when any non-blank line is prose."""
    found = _Items()
    seen = False
    for line in lines:
        if not line.strip():
            continue
        items = _line_items(line, amap)
        if items is None:
            return None
        for kind, value in items:
            found.add(kind, value)
            seen = True
    return found if seen else None


def _from_json_value(value: Any) -> list[Any] | None:
    """The label items of a parsed JSON value: a list of strings, {"labels": [...]}, or {"DRY": true, ...}."""
    if isinstance(value, list):
        return value if all(isinstance(v, str) for v in value) else None
    if isinstance(value, dict) and value:
        for k, v in value.items():
            if isinstance(k, str) and _key(k) in _DICT_KEYS:
                if isinstance(v, str):
                    return [p for p in _SPLIT.split(v)]
                if isinstance(v, list) and all(isinstance(x, str) for x in v):
                    return v
        if all(isinstance(v, bool) for v in value.values()):
            return [k for k, v in value.items() if v]
    return None


def _json_items(raw: Sequence[str], amap: dict[str, str]) -> _Items:
    found = _Items()
    for item in raw:
        item = _PAREN.sub("", item)  # "DRY (don't repeat yourself)"
        kind, value = _classify(item, amap, explicit=True)
        if kind == "unknown":
            # ["DRY - the loop is repeated"]: a label with its explanation inside the string.
            cut = _STRONG_CUT.search(item.strip())
            if cut and cut.start() > 0:
                head_kind, head = _classify(item.strip()[:cut.start()], amap)
                if head_kind == "label":
                    kind, value = head_kind, head
        found.add(kind, value)
    return found


def _json_candidate(text: str, amap: dict[str, str]) -> tuple[_Items, str] | None:
    """The best JSON (or bracketed) list in the text: one naming allowed labels, else one naming only
    unknown labels, else an explicit empty list; among equals the last, since models reason before they
    answer (and may quote the allowed list first)."""
    decoder = json.JSONDecoder()
    found: list[tuple[int, int, _Items, str]] = []  # (rank, position, items, format)
    taken_until = -1
    for m in re.finditer(r"[\[{]", text):
        start = m.start()
        if start < taken_until:
            continue
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_])"):
            continue  # an index or a call in code: a[i], f(x)[0]
        raw: list[Any] | None = None
        fmt = "json"
        end = start
        try:
            value, end = decoder.raw_decode(text, start)
            raw = _from_json_value(value)
        except (ValueError, RecursionError):
            flat = re.compile(r"\[([^\[\]{}]*)\]").match(text, start)
            if flat:
                end = flat.end()
                try:
                    value = ast.literal_eval(flat.group(0))
                    raw = _from_json_value(value) if isinstance(value, list) else None
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    region = _region([flat.group(1).replace(",", "\n")], amap)
                    if region is not None and region.labels:  # unquoted [DRY, SRP]: only when it names a label
                        found.append((2, start, region, "list"))
                        taken_until = end
                    continue
        if raw is None:
            continue
        items = _json_items(raw, amap)
        rank = 2 if items.labels else (1 if items.unknown else 0)
        found.append((rank, start, items, fmt))
        taken_until = end
    if not found:
        return None
    rank, _, items, fmt = max(found, key=lambda f: (f[0], f[1]))
    return items, fmt


def _lead_in_candidate(text: str, amap: dict[str, str]) -> _Items | None:
    """The list after the last lead-in ("Labels:", "The labels that apply are") that reads as a list."""
    lines_at = [m.start() for m in re.finditer(r"^", text, re.MULTILINE)]
    for m in reversed(list(_LEAD_IN.finditer(text))):
        line_start = max(s for s in lines_at if s <= m.start())
        at_line_start = not re.sub(r"[\s>#*_]", "", text[line_start:m.start("pre") + len(m.group("pre"))])
        rest = m.group("rest")
        if rest.strip(" \t*_:"):
            lines = [rest]
        else:  # "Labels:" on its own line, the list below it
            below = text[m.end():].lstrip("\n").split("\n")
            lines = []
            for line in below:
                if not line.strip():
                    break
                lines.append(line)
        region = _region(lines, amap)
        if region is None:
            continue
        # Unknown labels alone count only after a real "Labels:" line, not after "the result is wrong".
        explicit = at_line_start and m.group("sep") in (":", "=")
        if region.labels or (region.empty and region.nones) or (explicit and not region.empty):
            return region
    return None


def _line_groups(text: str, amap: dict[str, str]) -> tuple[list[_Items], bool]:
    """Runs of list-like lines, split by prose lines; and whether the whole answer is one such run."""
    groups: list[_Items] = []
    current: _Items | None = None
    prose = False
    for line in text.split("\n"):
        if not line.strip():
            continue
        items = _line_items(line, amap)
        if items == []:
            continue  # nothing but markup: neither a list line nor prose
        if items is None:
            prose = True
            current = None
            continue
        if current is None:
            current = _Items()
            groups.append(current)
        for kind, value in items:
            current.add(kind, value)
    return groups, not prose and len(groups) == 1


def _text_labels(text: str, allowed: Sequence[str]) -> list[str]:
    """Allowed labels occurring as whole words, in order. Exact-case mentions win when there are any,
    because prose uses "name" or "dry" as English words while a model naming a label writes NAME, DRY."""
    patterns = []
    for label in sorted(dict.fromkeys(allowed), key=len, reverse=True):
        parts = [re.escape(p) for p in _SEPARATORS.split(label.strip()) if p]
        if parts:
            patterns.append((label, r"[ \t_\-]+".join(parts)))
    if not patterns:
        return []
    body = "|".join(f"(?P<g{i}>{p})" for i, (_, p) in enumerate(patterns))
    bounded = rf"(?<![A-Za-z0-9_])(?<![A-Za-z0-9]-)(?:{body})(?![A-Za-z0-9_]|-[A-Za-z0-9])"
    for flags in (0, re.IGNORECASE):
        hits: list[str] = []
        for m in re.finditer(bounded, text, flags):
            label = patterns[int(next(k for k, v in m.groupdict().items() if v is not None)[1:])][0]
            if label not in hits:
                hits.append(label)
        if hits:
            return hits
    return []


def _result(items: _Items, fmt: str) -> ParsedLabels:
    if items.empty:
        return ParsedLabels((), (), "empty")
    return ParsedLabels(tuple(items.labels), tuple(items.unknown), fmt)


def parse_labels(answer: str, allowed: Sequence[str]) -> ParsedLabels:
    """The labels an answer names, however it wrote them.

    Tried in order: a JSON list (bare, fenced, embedded, ``{"labels": [...]}``, Python-quoted); the list after
    a lead-in ("Labels:", "The labels are"); the answer read as a plain list (commas, semicolons, slashes,
    "and", newlines, bullets, numbering, each item possibly followed by an explanation); the last run of
    list-like lines naming a label; and last, allowed labels as whole words in free text (no unknowns there:
    prose words are not labels). "None", "[]", "N/A", "no labels" give the empty set with format "empty".
    """
    amap: dict[str, str] = {}
    for label in allowed:
        amap.setdefault(_key(label), label)
    text = answer.replace("\r\n", "\n")
    if "</think>" in text.lower():  # a reasoning model's trace, possibly without its opening tag
        text = text[text.lower().rindex("</think>") + len("</think>"):]
    text = _CODE_FENCE.sub("\n", _THINK.sub("", text)).strip()
    if not text:
        return ParsedLabels((), (), "empty")

    tentative: ParsedLabels | None = None  # an empty or unknown-only JSON list: a later list naming labels wins
    cand = _json_candidate(text, amap)
    if cand is not None:
        items, fmt = cand
        if items.labels:
            return _result(items, fmt)
        tentative = _result(items, fmt)

    plain = re.sub(r"```[^\n]*", "", text)  # fence markers of a non-JSON block around a plain list
    lead = _lead_in_candidate(plain, amap)
    if lead is not None and (lead.labels or tentative is None):
        return _result(lead, "list")
    groups, whole = _line_groups(plain, amap)
    if whole and (groups[0].labels or tentative is None):
        return _result(groups[0], "list")
    for group in reversed(groups):
        if group.labels:
            return _result(group, "list")
    if tentative is not None:
        return tentative
    if groups and groups[-1].empty and groups[-1].nones:
        return ParsedLabels((), (), "empty")

    labels = _text_labels(plain, list(amap.values()))
    if not labels and _NONE_PROSE.search(plain):
        return ParsedLabels((), (), "empty")
    return ParsedLabels(tuple(labels), (), "text")


# ------------------------------------------------------------------------------------------- scoring


def jaccard(predicted: Iterable[str], expected: Iterable[str]) -> float:
    """|P ∩ E| / |P ∪ E|; two empty sets agree perfectly (1.0): "no label applies" is a correct answer."""
    p, e = set(predicted), set(expected)
    union = p | e
    return len(p & e) / len(union) if union else 1.0


class JaccardParams(CheckParams):
    min: float = Field(default=0.5, ge=0.0, le=1.0)


def grade_jaccard(answer: str, case: CaseSpec, p: JaccardParams, ctx: GradeContext | None = None) -> CheckOutcome:
    allowed = [str(x) for x in case.fields.get("labels") or []]
    expected = list(dict.fromkeys(str(x) for x in case.fields.get("answer") or []))
    parsed = parse_labels(answer, allowed)
    score = jaccard(parsed.labels, expected)
    # A tiny tolerance: a min written as a decimal (0.33) must not fail 1/3 on float rounding alone.
    passed = score >= p.min - 1e-9
    missing = [x for x in expected if x not in parsed.labels]
    extra = [x for x in parsed.labels if x not in expected]
    unknown = f"unknown labels: {', '.join(parsed.unknown)}" if parsed.unknown else ""
    if passed:
        reason = "; ".join(x for x in (f"Jaccard {score:.2f}", unknown) if x)
    else:
        parts = [f"missing {', '.join(missing)}" if missing else "", f"extra {', '.join(extra)}" if extra else "",
                 unknown]
        reason = f"Jaccard {score:.2f} < min {p.min:.2f}: " + "; ".join(x for x in parts if x)
    details = {"predicted": list(parsed.labels), "expected": expected, "unknown": list(parsed.unknown),
               "format": parsed.format}
    return CheckOutcome("jaccard", passed, score, reason, details=details)


# ------------------------------------------------------------------------------------------ reporting

_METRICS = ("jaccard", "precision", "recall", "f1")


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


def _metrics(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    # f1 = 2tp / (2tp + fp + fn): the harmonic mean of precision and recall where both exist, 0 when tp = 0.
    return {"jaccard": _ratio(tp, tp + fp + fn), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def label_report(pairs: Iterable[tuple[Iterable[str], Iterable[str]]],
                 labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-label and averaged scores over a suite's (expected, predicted) label sets.

    Per label (the given labels first, then any other seen, in order of appearance): support (cases
    expecting it), predicted, tp/fp/fn and jaccard = tp/(tp+fp+fn), precision, recall, f1, None where a
    denominator is 0. "micro" pools tp/fp/fn over labels (frequent labels weigh more), "macro" averages the
    labels' values that exist (every label weighs the same, so a weak rare label shows); "samples_jaccard"
    is the mean per-case Jaccard, the score the check gives.
    """
    order: list[str] = list(dict.fromkeys(labels or []))
    cases: list[tuple[set[str], set[str]]] = []
    for expected, predicted in pairs:
        e, p = list(dict.fromkeys(expected)), list(dict.fromkeys(predicted))
        order += [x for x in e + p if x not in order]
        cases.append((set(e), set(p)))
    per: dict[str, dict[str, Any]] = {}
    totals = [0, 0, 0]
    for label in order:
        tp = sum(1 for e, p in cases if label in e and label in p)
        fp = sum(1 for e, p in cases if label not in e and label in p)
        fn = sum(1 for e, p in cases if label in e and label not in p)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
        per[label] = {"support": tp + fn, "predicted": tp + fp, "tp": tp, "fp": fp, "fn": fn, **_metrics(tp, fp, fn)}
    macro: dict[str, float | None] = {}
    for name in _METRICS:
        values = [v[name] for v in per.values() if v[name] is not None]
        macro[name] = round(sum(values) / len(values), 6) if values else None
    samples = [jaccard(p, e) for e, p in cases]
    return {
        "cases": len(cases),
        "labels": per,
        "micro": _metrics(*totals),
        "macro": macro,
        "samples_jaccard": round(sum(samples) / len(samples), 6) if samples else None,
    }


def format_label_report(report: dict[str, Any]) -> list[str]:
    """The report as a fixed-width table for the terminal summary: one row per label, then micro and macro
    (support there is the total), then the per-case mean; "-" where a value does not exist."""
    per: dict[str, dict[str, Any]] = report.get("labels", {})
    width = max([len("label"), len("macro"), *(len(str(k)) for k in per)])

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def row(name: str, support: Any, values: dict[str, Any]) -> str:
        return (f"{name:<{width}}  {support!s:>7}  {num(values.get('precision')):>9}  {num(values.get('recall')):>6}"
                f"  {num(values.get('jaccard')):>7}")

    lines = [f"{'label':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  {'jaccard':>7}"]
    lines += [row(str(label), v.get("support", "-"), v) for label, v in per.items()]
    total = sum(int(v.get("support") or 0) for v in per.values())
    lines.append(row("micro", total, report.get("micro") or {}))
    lines.append(row("macro", total, report.get("macro") or {}))
    cases = report.get("cases", 0)
    lines.append(f"samples jaccard {num(report.get('samples_jaccard'))} over {cases} case{'' if cases == 1 else 's'}")
    return lines


def labels_fields(outcome: CheckOutcome, case: CaseSpec) -> dict[str, Any]:
    """The case's ``labels`` record (CaseResult.labels): what the answer named and what was expected, with the
    allowed set (the suite report lists the allowed labels first, in their order)."""
    if not outcome.details:
        return {}
    return {"labels": {**outcome.details, "allowed": list(case.fields.get("labels") or [])}}


def aggregate_labels(results: list[Any]) -> dict[str, Any]:
    """A suite x model row's ``labels`` entry: the per-label report over its graded cases (CaseResults)."""
    labelled = [r for r in results if r.outcome in ("passed", "failed") and r.labels]
    if not labelled:
        return {}
    allowed = list(dict.fromkeys(x for r in labelled for x in r.labels.get("allowed", [])))
    return {"labels": label_report([(r.labels["expected"], r.labels["predicted"]) for r in labelled], allowed or None)}


def label_summary_lines(row: Mapping[str, Any], name: str) -> list[str]:
    """The row's label report under the terminal summary table."""
    report = row.get("labels")
    if not report:
        return []
    return [f"{name}: labels (per-label Jaccard, precision, recall):",
            *("  " + line for line in format_label_report(report))]


CHECKS = [
    CheckDef("jaccard", JaccardParams, grade_jaccard, shorthand="min", kinds=frozenset({"labels"}),
             doc="Jaccard of the labels named in the answer and the expected labels >= min",
             case_fields=labels_fields, aggregate=aggregate_labels, summary_lines=label_summary_lines),
]
