"""``llmeval report``: one self-contained HTML file (no CDN, nothing fetched: its script and style are inline,
charts are inline SVG, artifact images are inlined as data URIs), for reading a run offline or attaching it to a
CI job. The main view is a matrix of cases x models and the baseline (matrix.py), paged and filtered by the page's
script over one compact JSON payload, so that a 100,000-case run does not become 100,000 elements."""

from __future__ import annotations

import base64
import json
import math
import posixpath
from pathlib import Path
from typing import Any

from pytest_llmeval.report.base import Reporter
from pytest_llmeval.report.charts import latency_chart, pass_rate_chart
from pytest_llmeval.report.matrix import build_matrix, find_baseline, payload, script_json, text_limit

__all__ = ["HtmlReporter", "latency_chart", "pass_rate_chart", "render"]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_IMAGE_BYTES = 2 << 20


# A field an older (or hand-written) results.json lacks reaches these as jinja's Undefined: shown as "-".
def _pct(x: float | None) -> str:
    return f"{x:.1%}" if isinstance(x, int | float) else "-"


def _pct0(x: float | None) -> str:
    return f"{x:.0%}" if isinstance(x, int | float) else "-"


def _num(x: float | None, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "-"


def _images(case: dict[str, Any], root: Path) -> dict[str, str]:
    out = {}
    # Files the program wrote, and the images vision questions were asked about (labelled calibration images,
    # hand-written tests' images), once each.
    files = dict(case.get("artifacts") or {})
    for q in case.get("vision") or []:
        if q.get("image") and q["image"] not in files.values():
            files.setdefault(Path(q["image"]).name, q["image"])
    for name, path in files.items():
        p = Path(path) if Path(path).is_absolute() else root / path
        kind = IMAGE_TYPES.get(p.suffix.lower())
        if kind and p.is_file() and p.stat().st_size <= MAX_IMAGE_BYTES:
            out[name] = f"data:{kind};base64," + base64.b64encode(p.read_bytes()).decode()
    return out


def _norm(source: Any) -> str:
    # As rag.index.retrieval_scores compares sources (os.path.normpath of posix-style paths); URLs pass unchanged.
    text = str(source)
    return text if "://" in text else posixpath.normpath(text)


def compact_json(value: Any) -> str:
    """An application's metadata (or any plain data) on one line, keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False, default=str)


def usage_line(usage: dict[str, Any] | None) -> str:
    """``3 calls · 120 + 40 tokens · $0.0012 · 1.23 s · cached`` of a usage mapping (app_usage, app_calls, a turn's
    usage); empty when there is none."""
    if not usage:
        return ""
    calls = int(usage.get("calls") or 0)
    parts = [f"{calls} model call{'' if calls == 1 else 's'}"]
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"{tokens_in or 0} + {tokens_out or 0} tokens")
    if usage.get("cost_usd") is not None:
        parts.append(f"${float(usage['cost_usd']):.4f}")
    if usage.get("latency_s") is not None:
        parts.append(f"{float(usage['latency_s']):.2f} s")
    if usage.get("cached"):
        parts.append("cached")
    return " · ".join(parts)


def references_view(references: list[dict[str, Any]] | None, retrieval: dict[str, Any] | None = None
                    ) -> list[dict[str, Any]]:
    """The references in their order, numbered, each marked ``expected`` when its source is one of the case's
    expected sources (``retrieval.expected``: the ``sources:`` it should have found)."""
    expected = {_norm(e) for e in (retrieval or {}).get("expected") or []}
    out = []
    for i, r in enumerate(references or [], start=1):
        r = dict(r) if isinstance(r, dict) else {"source": r}
        source = str(r.get("source", ""))
        where = source
        if r.get("start_line") is not None:
            where += f":{r['start_line']}-{r.get('end_line', r['start_line'])}"
        text = r.get("text")
        out.append({"n": r.get("n", i), "source": source, "where": where, "title": r.get("title"),
                    "score": r.get("score"), "text": str(text) if text else None,
                    "expected": bool(expected) and _norm(source) in expected})
    return out


def expected_view(references: list[dict[str, Any]] | None, retrieval: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each expected source of the case with whether the references found it."""
    found = {_norm(r.get("source", "")) for r in references or [] if isinstance(r, dict)}
    return [{"source": e, "found": _norm(e) in found} for e in (retrieval or {}).get("expected") or []]


TRAJECTORY_ENDED = {"answer": "ended with a final answer", "max_steps": "stopped at the agent loop's max_steps",
                    "error": "stopped: the agent loop could not go on"}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else compact_json(value)


def trajectory_view(trajectory: dict[str, Any] | None) -> dict[str, Any] | None:
    """An agent case's trajectory (results.json's ``trajectory``) as the drill-down shows it: per step its number
    (1-based, as the failure report and the checks' reasons count), tool, arguments, result or error, latency and
    tokens; the final answer, how the run ended, the mode. None without a trajectory."""
    if not isinstance(trajectory, dict):
        return None
    steps = []
    for i, raw in enumerate(trajectory.get("steps") or []):
        if not isinstance(raw, dict):
            continue
        arguments = raw.get("arguments")
        if raw.get("raw_arguments") is not None:  # the model wrote arguments that are not JSON: show what it wrote
            arguments = raw["raw_arguments"]
        error = raw.get("error")
        steps.append({"n": int(raw.get("step", i)) + 1, "name": str(raw.get("name", "?")),
                      "arguments": _shown(arguments if arguments is not None else {}),
                      "error": None if error is None else str(error),
                      "result": None if error is not None else _shown(raw.get("result")),
                      "latency_s": raw.get("latency_s"), "text": raw.get("text"),
                      "tokens": (f"{raw.get('prompt_tokens') or 0} + {raw.get('completion_tokens') or 0}"
                                 if raw.get("prompt_tokens") is not None or raw.get("completion_tokens") is not None
                                 else None)})
    ended = str(trajectory.get("ended") or "answer")
    return {"steps": steps, "final": trajectory.get("final"), "ended": ended,
            "ended_text": TRAJECTORY_ENDED.get(ended, f"ended: {ended}"), "mode": trajectory.get("mode"),
            "errors": sum(1 for s in steps if s["error"] is not None)}


RICH = ("trajectory", "references", "app_usage", "metadata", "transcript", "vision", "robustness", "code",
        "artifacts")
EXTRAS_LIMIT = 5000  # case results whose rich drill-down (trajectory, references, transcript...) the file keeps


def _rich(case: dict[str, Any]) -> bool:
    return any(case.get(k) for k in RICH) or bool((case.get("retrieval") or {}).get("expected"))


def render(doc: dict[str, Any], root: Path | None = None, baseline: Path | None = None) -> str:
    """The report of one results document; ``root`` resolves relative artifact paths and the gate's baseline;
    ``baseline`` names a baseline file to compare with (default: the one the gate used, if it can be found)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pytest_llmeval", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.ChainableUndefined)
    gate = doc.get("gate")
    verdicts = {(v["suite"], v["model"]): v for v in (gate or {}).get("suites", [])}
    base = root or Path.cwd()
    cases = doc.get("cases") or []
    app_rows = [r for r in doc["suites"] if r.get("app_calls")]
    agent_rows = [r for r in doc["suites"] if r.get("agent")]
    before, note = find_baseline(doc, base, baseline)
    matrix = build_matrix(doc, before, note)
    # The rich drill-downs, rendered here (escaped by jinja) into inert <template>s the page clones when a row is
    # opened: the flipped and failing rows' first, up to EXTRAS_LIMIT.
    extras: dict[int, int] = {}
    rich_total = 0
    for row in matrix.rows:
        for i, c in row.cells:
            if _rich(c):
                rich_total += 1
                if len(extras) < EXTRAS_LIMIT:
                    extras[i] = len(extras)
    rich = [(k, cases[i], _images(cases[i], base)) for i, k in sorted(extras.items())]  # in the run's order
    limit = text_limit(len(cases))
    data = payload(matrix, limit, lambda i: extras.get(i, -1))
    return env.get_template("report.html.j2").render(
        doc=doc, gate=gate, verdicts=verdicts, rich=rich, rich_total=rich_total, extras_limit=EXTRAS_LIMIT,
        app_rows=app_rows, agent_rows=agent_rows, pct=_pct, pct0=_pct0, num=_num, trajectory_view=trajectory_view,
        matrix=matrix, flips=matrix.counts(), text_limit=limit, data_json=script_json(data),
        pass_chart=pass_rate_chart(doc["suites"], verdicts), latency_chart=latency_chart(cases),
        isnan=math.isnan, compact_json=compact_json, usage_line=usage_line, references_view=references_view,
        expected_view=expected_view)


class HtmlReporter(Reporter):
    """The self-contained HTML report of a results file (``llmeval report``)."""

    name = "html"

    def render(self, doc: dict[str, Any], root: Path) -> str:
        return render(doc, root)
