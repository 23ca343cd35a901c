"""What ``llmeval generate`` asks a model, and how its replies are read: the request for new cases (the kind's
fields, the description, seeds as examples), the prompts of a transform and of the faithfulness judge, and the
robust parsing of replies (code fences, JSON or YAML, a list, a wrapper, one object)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from pytest_llmeval.flywheel.spec import GenerateSpec, Target

GENERATE_PROMPT_VERSION = "1"  # part of every generation cache key: editing the prompt never serves old replies
DROPPED_FIELDS = ("id", "split")  # review assigns ids; the split step assigns splits

SYSTEM = ("You write test cases for evaluating language models. You follow the case schema exactly and reply "
          "with JSON only.")
TRANSFORM_SYSTEM = "You rewrite code exactly as asked. Reply with the complete program in one fenced code block."
TEXT_TRANSFORM_SYSTEM = "You rewrite text exactly as asked. Reply with the rewritten text only."
TEXT_TRANSFORM_RUBRIC = ("Faithfulness of a rewrite: the rewritten text (the answer) does what the instruction asks "
                         "and asks for exactly the same thing as the original (in the question): the same expected "
                         "answer would be right for both. 10 = same meaning; 5 = close but a detail changed; 0 = a "
                         "different question.")
TRANSFORM_RUBRIC = ("Faithfulness of a rewrite: the rewritten code (the answer) does what the instruction asks and "
                    "still solves the same problem as the original code (in the question), with the same behaviour. "
                    "10 = faithful and equivalent; 5 = equivalent but the instruction is not applied; 0 = different "
                    "behaviour.")

# What the generator is told about each kind: its fields, and an example when the suite offers no seed.
KIND_FIELDS: dict[str, str] = {
    "qna": (
        "- question: the question put to the model under test (a string)\n"
        "- expect: a list of checks on the model's answer, each a one-key object: {\"contains\": \"Paris\"} "
        "(or a list of strings that must all occur), {\"not_contains\": \"...\"}, {\"regex\": \"pattern\"}, "
        "{\"equals\": \"...\"}\n"
        "- reference: a short correct answer (a string)"),
    "choice": (
        "- context: optional background (a string)\n"
        "- question: the question (a string)\n"
        "- choices: an object of lettered options, {\"A\": \"...\", \"B\": \"...\", \"C\": \"...\"}\n"
        "- answer: the letter of the one correct choice"),
    "code": (
        "- language: {language}\n"
        "- prompt: the programming task put to the model under test (a string)\n"
        "- expect: a list of checks on the program, each a one-key object: {\"stdout\": {\"equals\": \"...\"}} "
        "or {\"stdout\": {\"contains\": \"...\"}}, {\"runs\": true}, {\"tests\": \"assert f(1) == 2\"} "
        "(Python only)\n"
        "- solution: a complete reference program that solves the task and passes the checks (a string)"),
    "labels": (
        "- input: the text or code to label (a string)\n"
        "- answer: the list of labels that apply, from: {labels}"),
    "calibration": (
        "- question: the question (a string)\n"
        "- answer: an answer to it, right or wrong, that a judge will grade (a string)\n"
        "- reference: a correct answer (a string)\n"
        "- score: the score a careful person would give the answer, 0-10"),
}
KIND_EXAMPLES: dict[str, dict[str, Any]] = {
    "qna": {"question": "What is the capital of France?", "expect": [{"contains": "Paris"}],
            "reference": "Paris is the capital of France."},
    "choice": {"question": "Which planet is known as the red planet?",
               "choices": {"A": "Venus", "B": "Mars", "C": "Jupiter"}, "answer": "B"},
    "code": {"language": "python", "prompt": "Write a Python program that prints the squares of 1 to 3, one per line.",
             "expect": [{"stdout": {"equals": "1\n4\n9"}}],
             "solution": "for i in range(1, 4):\n    print(i * i)\n"},
    "labels": {"input": "int f(int x) { return x * 86400; }", "answer": ["MC"]},
    "calibration": {"question": "What is the capital of Japan?", "answer": "Kyoto.", "reference": "Tokyo",
                    "score": 1},
}
# The field holding a case's main text (what duplicates are compared on, what a leak would show up in).
_TEXT_FIELDS = ("question", "prompt", "input")


# ------------------------------------------------------------------------------------------- parsing replies

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)",
                    re.DOTALL | re.MULTILINE)


def _as_cases(value: Any) -> list[Any] | None:
    """The candidates in a parsed reply: a list, ``{"cases": [...]}`` (or another single list value), one case."""
    if isinstance(value, list):
        return value or None
    if isinstance(value, dict):
        for key in ("cases", "candidates", "items", "tests", "examples"):
            if isinstance(value.get(key), list):
                return value[key] or None
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(value) == 1 and len(lists) == 1:
            return lists[0]
        return [value] if value else None
    return None


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON array or object embedded in the text, in order."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while True:
        starts = [p for p in (text.find("[", i), text.find("{", i)) if p != -1]
        if not starts:
            return out
        i = min(starts)
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(value)
        i = end


def parse_candidates(text: str) -> list[Any]:
    """The cases in a generator's reply, however it was written: fenced or bare, JSON or YAML, a list, a
    ``{"cases": [...]}`` wrapper, several objects one after the other, or a single object. [] when none."""
    chunks = [m.group(3) for m in _FENCE.finditer(text or "")] + [text or ""]
    for chunk in chunks:
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            found = _as_cases(json.loads(chunk))
        except json.JSONDecodeError:
            found = None
        if found:
            return found
        values = _json_values(chunk)
        if values:
            # One list (or wrapper) wins; otherwise the objects side by side are the cases.
            for v in values:
                if isinstance(v, list) and any(isinstance(x, dict) for x in v):
                    return v
            objects = [v for v in values if isinstance(v, dict)]
            if len(objects) == 1:
                found = _as_cases(objects[0])
                if found:
                    return found
            if objects:
                return objects
        try:
            found = _as_cases(yaml.safe_load(chunk))
        except yaml.YAMLError:
            found = None
        if found and any(isinstance(x, dict) for x in found):  # not a bullet list of prose
            return found
    return []


def normalise_candidate(raw: Any) -> Any:
    """Small, unambiguous repairs before validation: no id or split (review and split assign them), and an
    ``expect`` written as one mapping of several checks becomes the list of one-key checks it means."""
    if not isinstance(raw, dict):
        return raw
    case = {str(k): v for k, v in raw.items() if str(k) not in DROPPED_FIELDS}
    expect = case.get("expect")
    if isinstance(expect, dict):
        case["expect"] = [{k: v} for k, v in expect.items()]
    return case


# -------------------------------------------------------------------------------------------------- requests


def case_text(case: dict[str, Any]) -> str:
    """A case's main text (question, prompt or input): what duplicates are compared on."""
    for key in _TEXT_FIELDS:
        if isinstance(case.get(key), str) and case[key].strip():
            return str(case[key])
    return json.dumps(case, sort_keys=True, default=str)


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A loaded case's fields as a person would write them: no defaults, no id or split."""
    return {k: v for k, v in fields.items()
            if k not in DROPPED_FIELDS and v is not None and v != [] and v != {}}


def _seeds(spec: GenerateSpec, target: Target) -> list[dict[str, Any]]:
    if spec.seeds is not None:
        return [normalise_candidate(s) for s in spec.seeds]
    raw = target.raw_cases or [_clean_fields(c.fields) for c in target.cases]
    return [normalise_candidate(c) for c in raw[:3]]


def generation_messages(spec: GenerateSpec, target: Target, seeds: list[dict[str, Any]], n: int
                        ) -> list[dict[str, str]]:
    """The request for ``n`` new cases: the kind's fields, the description, the seeds as examples."""
    kind = target.kind
    languages = sorted({str(s["language"]) for s in seeds if s.get("language") in ("python", "c")})
    labels = target.settings.get("labels") or sorted({str(a) for s in seeds for a in s.get("labels") or []})
    fields = KIND_FIELDS[kind].replace("{language}", " or ".join(languages) if languages else "python or c") \
        .replace("{labels}", ", ".join(map(str, labels)) if labels else "(your choice)")
    if kind == "labels" and not target.settings.get("labels"):
        fields += "\n- labels: the list of allowed labels"
    if kind == "code" and not spec.filters.compile:
        fields = fields.replace("\n- solution:", "\n- solution (optional):")
    if spec.filters.judge is not None and kind == "qna":
        fields = fields.replace("- reference: a short", "- reference (required): a short")
    examples = seeds or [KIND_EXAMPLES[kind]]
    parts = [f"Write {n} new test case{'s' if n != 1 else ''} for the suite {target.name!r} (kind: {kind})."]
    if spec.describe:
        parts.append(f"What the cases should cover: {spec.describe.strip()}")
    if target.settings.get("system"):
        parts.append(f"The model under test is told: {str(target.settings['system']).strip()}")
    if target.settings.get("expect"):
        parts.append("Every case is also checked with: " + json.dumps(target.settings["expect"], ensure_ascii=False))
    parts.append(f"Each case is a JSON object with these fields:\n{fields}")
    parts.append(("Examples of existing cases (do not repeat them):" if seeds else "An example case:")
                 + "\n```json\n[\n" + ",\n".join(json.dumps(e, ensure_ascii=False, default=str) for e in examples)
                 + "\n]\n```")
    parts.append(f"Make the {n} cases differ from the examples and from each other. Reply with a JSON list of {n} "
                 "objects and nothing else (no ids).")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


_LEAD = re.compile(r"^\s*(?:(?:here is|here's)\b[^:\n]*:|(?:rewritten|new|paraphrased)\s+\w+\s*:|question\s*:)\s*",
                   re.IGNORECASE)


def rewritten_text(reply: str) -> str:
    """The rewrite in a model's reply: without a fence, a "Here is the rewritten question:" lead-in or quotes;
    the first paragraph only (small models go on to answer it)."""
    text = reply.strip()
    fence = re.search(r"```[\w-]*\n(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    text = _LEAD.sub("", text, count=1).strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text.strip("“”").strip()


_C_DEFINITION = re.compile(r"#include\b|^\s*(?:static\s+|const\s+|unsigned\s+|inline\s+)*(?:int|void|char|float|"
                           r"double|long|short|size_t|bool|struct\s+\w+)[\s*]+\w+\s*\([^)]*\)\s*\{", re.MULTILINE)


def _guess_language(code: str) -> str:
    """C when the code has an #include or a C function definition, else Python."""
    return "c" if _C_DEFINITION.search(code) else "python"
