"""Parsers of option values: text in, a typed value out, or a ValueError that says what was expected.

Each parser is one column of the option table (:mod:`pytest_llmeval.config.options`). They know nothing about
where a value came from: the resolver adds that ("Invalid timeout 'soon' from command line --llm-timeout:
expected a number of seconds."). A parser of a list value raises :class:`BadItem` to name the one bad line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmeval.core.errors import UsageError

Parser = Callable[[Any], Any]


class BadItem(UsageError, ValueError):
    """One item of a list value is invalid: ``item`` is shown instead of the whole list."""

    def __init__(self, item: str, problem: str) -> None:
        super().__init__(item, problem)
        self.item = item
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.item!r}: {self.problem}"


def items(raw: Any) -> list[str]:
    """A list value's items: ini lines and repeated options arrive as lists, an environment variable as one
    string."""
    return [str(x) for x in raw] if isinstance(raw, list | tuple) else [str(raw)]


def lines(raw: Any) -> list[str]:
    """The meaningful lines of an ini line list: stripped, without blank lines and ``#`` comments."""
    return [line.strip() for line in items(raw) if line.strip() and not line.strip().startswith("#")]


def text(raw: Any) -> str:
    return str(raw)


def stripped(raw: Any) -> str | None:
    """Text with surrounding blanks removed; only blanks means unset."""
    return str(raw).strip() or None


def path(raw: Any) -> Path:
    return Path(str(raw))


def paths(raw: Any) -> tuple[Path, ...]:
    return tuple(Path(item) for item in items(raw))


def flag(raw: Any) -> bool:
    """A switch given in the environment (the command line gives True)."""
    if raw is True or raw is False:
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1 or 0 (or true/false, yes/no, on/off)")


def choice(options: Sequence[str]) -> Parser:
    """One of ``options``, case-insensitive."""

    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def number(convert: Callable[[str], float], *, bad: str, ok: Callable[[float], bool] = lambda _: True,
           out_of_range: str = "", strip: str = "") -> Parser:
    """A number: ``bad`` is what a value that is not one expected, ``out_of_range`` what one outside ``ok`` did."""

    def parse(raw: Any) -> Any:
        try:
            value = convert(str(raw).strip().lstrip(strip))
        except (TypeError, ValueError):
            raise ValueError(f"expected {bad}") from None
        if not ok(value):
            raise ValueError(f"expected {out_of_range}")
        return value

    return parse


def whole(low: int) -> Parser:
    """A whole number ``>= low``."""
    return number(int, bad=f"a whole number >= {low}", ok=lambda v: v >= low, out_of_range=f"a number >= {low}")


def models(raw: Any) -> tuple[str, ...]:
    """Model names: repeated options, ini lines, and each of them comma separated; duplicates dropped."""
    out: list[str] = []
    for item in items(raw):
        out.extend(part.strip() for part in item.replace("\n", ",").split(",") if part.strip())
    if not out:
        raise ValueError("expected model names")
    return tuple(dict.fromkeys(out))


def shard(raw: Any) -> tuple[int, int]:
    """``I/N``: the 1-based shard index and the shard count."""
    index, sep, count = str(raw).partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError("expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(index), int(count)


def aliases(raw: Any) -> dict[str, str]:
    """``name = litellm-model`` lines."""
    out: dict[str, str] = {}
    for line in lines(raw):
        name, sep, target = line.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise BadItem(line, "expected 'name = litellm-model'")
        out[name.strip()] = target.strip()
    return out


@dataclass(frozen=True)
class Limit:
    """A client-side rate limit of one model (the ini key llmeval_rate_limits); None: no limit."""

    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute (prompt estimate + max_tokens)

    def share(self, workers: int) -> Limit:
        n = max(1, workers)
        return Limit(None if self.rpm is None else self.rpm / n, None if self.tpm is None else self.tpm / n)


_LIMIT_PART = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(rpm|tpm|rps)\s*$", re.IGNORECASE)


def parse_limits(raw: Any) -> dict[str, Limit]:
    """``model = 500 rpm, 200000 tpm`` lines; a BadItem (a ValueError) names the bad line and what is wrong."""
    out: dict[str, Limit] = {}
    for line in lines(raw):
        model, sep, spec = line.partition("=")
        if not sep or not model.strip():
            raise BadItem(line, "expected 'model = 500 rpm, 200000 tpm'")
        rpm = tpm = None
        for part in spec.split(","):
            m = _LIMIT_PART.match(part)
            if not m:
                raise BadItem(line, f"cannot read {part.strip()!r}; expected e.g. '500 rpm' or '200000 tpm'")
            value, unit = float(m.group(1)), m.group(2).lower()
            if value <= 0:
                raise BadItem(line, "limits must be positive")
            if unit == "tpm":
                tpm = value
            else:
                rpm = value * 60 if unit == "rps" else value
        out[model.strip()] = Limit(rpm, tpm)
    return out


def fail_under(raw: Any) -> tuple[Any, ...]:
    """Pass-rate floors: ``0.8`` (or ``80``) for every suite, ``suite: 0.9`` for one; gate LimitRules."""
    from pytest_llmeval.results.gate import LimitRule

    rules = []
    for item in items(raw):
        suite, sep, value = item.rpartition(":")
        try:
            floor = float(value.strip())
        except ValueError:
            raise BadItem(item, "expected a pass rate such as 0.8 (or 80)") from None
        rules.append(LimitRule("pass_rate", ">=", floor / 100 if floor > 1 else floor,
                               suite.strip() or None if sep else None))
    return tuple(rules)


def gate_rules(raw: Any) -> tuple[Any, ...]:
    """Gate rules in their text form (``pass_rate:-5%``, ``suite:latency_p95<=2.5``, ...)."""
    from pytest_llmeval.results.gate import GateError, parse_rule

    try:
        return tuple(parse_rule(item) for item in items(raw))
    except GateError as exc:
        raise ValueError(str(exc)) from None
