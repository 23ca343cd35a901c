"""The semantic cache's second stage (``--llm-semantic-verify=judge``): a model asked whether two requests are the same.

The embedding search and the lexical guard (:mod:`pytest_llmeval.cache.guard`) serve about 86% of paraphrases and
still serve some meaning changes the guard has no rule for (a role swap without a role word, an antonym missing from
its table: cosine 0.99 and more). With a verifier, a candidate in the band from ``threshold - VERIFY_MARGIN`` up is
shown to a judge model with a short strict prompt, and only "yes" serves it:

- what the guard finds in **hard** facts (negation, numbers, quoted text, code) stays a refusal: the judge is not
  asked (these are meaning changes far more often than paraphrases, and a weak judge would let them through);
- a candidate whose text is the request's up to case, spacing and end punctuation is served unasked;
- every other candidate the search finds in the band, the guard's passes and its soft refusals (names, opposite
  words, word replacements, roles, question words) alike, is asked, guard passes first, at most
  :data:`VERIFY_MAX` per lookup.

The cache layer knows nothing of providers: the runner (``providers/runner.py``) hands a :data:`Verifier` in, built
here by :func:`judge_verifier` from its own ``complete`` (so the exact cache, the budget, retries and, under xdist,
the controller's call server apply to the verdicts too). Any error, or a reply that is neither yes nor no, is a
refusal: the cache never serves on doubt.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERIFY_MODES = ("off", "judge")
VERIFY_MARGIN = 0.10  # the band: candidates from threshold - margin are asked (0.65 at the default 0.75)
VERIFY_MAX = 2  # judge calls per lookup, at most
VERIFY_VERSION = 1  # in the verdicts' cache key: a new prompt asks again
VERIFY_PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 4}
HARD_FINDINGS = ("negation", "numbers", "quoted", "code")  # the guard's reasons a judge may not overrule

PROMPT = """\
You check a response cache. Two requests were sent to an assistant:

A: {a}
B: {b}

Are A and B the same request, so that one answer would serve both correctly? Rephrasing is the same. Any \
difference in what is asked (a name, a number, a negation, an opposite, who does what to whom, a unit, a \
direction, a different quantity or detail) is not the same.
Answer with one word: yes or no."""


@dataclass(frozen=True)
class Verdict:
    """The judge's answer on one pair, and what it cost."""

    same: bool
    cached: bool = False  # taken from the cache (the exact cache, or this process's memory): no model call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None  # why there is no verdict (an error, an unreadable reply): a refusal
    reply: str | None = None  # the judge's reply as it came


Verifier = Callable[[str, str], Verdict]


def normalize(text: str) -> str:
    """The text as the judge sees it (and as the verdict's cache key holds it): whitespace collapsed."""
    return " ".join(text.split())


def same_text(a: str, b: str) -> bool:
    """Whether two requests differ only in case, spacing and end punctuation (served without asking)."""
    def bare(t: str) -> str:
        return normalize(t).casefold().rstrip(" ?.!")
    return bare(a) == bare(b)


def is_hard(finding: str) -> bool:
    """Whether a guard finding is one the judge may not overrule."""
    return finding.startswith(HARD_FINDINGS)


def messages_for(new: str, cached: str) -> list[dict[str, Any]]:
    """The judge's request. The pair is sorted, so A/B and B/A share one cached verdict (the question is symmetric)."""
    a, b = sorted((normalize(new), normalize(cached)))
    return [{"role": "user", "content": PROMPT.format(a=a, b=b)}]


_ANSWER = re.compile(r"[a-z]+")


def parse(reply: str) -> bool | None:
    """True for yes, False for no, None for anything else (the first word decides)."""
    word = _ANSWER.search(reply.strip().lower())
    if word is None:
        return None
    return {"yes": True, "no": False}.get(word.group(0))


def judge_verifier(ask: Callable[[list[dict[str, Any]]], Any]) -> Verifier:
    """A verifier asking a model through ``ask(messages) -> Completion`` (anything with ``text``, ``cached``,
    ``prompt_tokens``, ``completion_tokens``, ``cost_usd``). Never raises: a failure is a refusal with its error."""

    def verify(new: str, cached: str) -> Verdict:
        try:
            completion = ask(messages_for(new, cached))
        except Exception as exc:  # the provider, the budget, the breaker: never serve on doubt
            return Verdict(False, error=f"{type(exc).__name__}: {exc}")
        from_cache = bool(completion.cached)
        used = (0, 0, 0.0) if from_cache else (int(completion.prompt_tokens or 0), int(completion.completion_tokens or 0),
                                           float(completion.cost_usd or 0.0))
        same = parse(str(completion.text))
        error = None if same is not None else f"unreadable verdict {str(completion.text)[:40]!r}"
        return Verdict(bool(same), cached=from_cache, prompt_tokens=used[0], completion_tokens=used[1], cost_usd=used[2],
                       error=error, reply=str(completion.text))

    return verify


COUNTERS = ("lookups", "verified", "served", "refused", "served_identical", "hard_refusals", "judge_calls",
            "judge_cached", "judge_errors", "prompt_tokens", "completion_tokens", "cost_micro_usd")


class VerifyStats:
    """How the verifier was used: lookups, lookups verified, served and refused, the judge's calls and tokens.

    Counted in memory; once the run's directory is known (:attr:`directory`, set by the runner for the run's
    processes to share, like the budget) also in a diskcache there, so the controller reads every worker's counts.
    """

    def __init__(self) -> None:
        self.directory: Path | None = None
        self._memory = dict.fromkeys(COUNTERS, 0)
        self._store: Any = None
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._memory[name] += n
            if self.directory is None:
                return
            if self._store is None:
                import diskcache

                self.directory.mkdir(parents=True, exist_ok=True)
                self._store = diskcache.Cache(str(self.directory), timeout=60)
            with self._store.transact():
                for name, n in counts.items():
                    if n:
                        self._store.incr(name, n, default=0)

    def state(self) -> dict[str, Any]:
        """The counts of the run (from the shared store when there is one), cost in USD."""
        with self._lock:
            counts = dict(self._memory)
            if self.directory is not None and (self.directory / "cache.db").exists():
                import diskcache

                with diskcache.Cache(str(self.directory), timeout=60) as store:
                    counts = {name: int(store.get(name, 0)) for name in COUNTERS}
        cost = counts.pop("cost_micro_usd") / 1e6
        return {**counts, "cost_usd": round(cost, 6)}

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
