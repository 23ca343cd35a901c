"""A run's cases kept on disk, not in memory: the controller's side of results.json at 100 000 cases.

Each finished case's JSON text (the journal line, made anyway) is appended to an anonymous temporary file as
it arrives; memory keeps per case only its sort key, where its line is, and the few numbers its suite x model row
needs (``aggregate.column``), in arrays. Cases that set a rare field (``aggregate.is_plain``: repeats, labels,
trajectories, judges...) are kept whole, as their rows need more of them. At the end the rows are made exactly as
``aggregate.aggregate`` makes them (the same ``make_row``, the cases in the same order), the checks' aggregates
read their rows' cases back from the file one at a time, and results.json is written by copying the lines in
order: no list of every case, and no document of them in one string (see ``aggregate.write_results``).

``results.json`` is the same, byte for byte, as ``aggregate.build_results`` + ``write_results`` of the same cases
(tests/unit/test_aggregate_stream.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from pytest_llmeval.core.checks import AggregateFn
from pytest_llmeval.results.aggregate import (
    CaseResult,
    column,
    is_plain,
    make_row,
    results_document,
)
from pytest_llmeval.results.journal import encode_line

OUTCOME_CODES: dict[str, int] = {}  # outcome or kind string -> its code in the arrays (interned, per process)
_NAMES: list[str] = []
_NAN = float("nan")


def _code(name: str) -> int:
    code = OUTCOME_CODES.get(name)
    if code is None:
        code = OUTCOME_CODES[name] = len(_NAMES)
        _NAMES.append(name)
    return code


def _opt(x: float | None) -> float:
    return _NAN if x is None else float(x)


def _back(x: float) -> float | None:
    return None if x != x else x  # NaN stands for None


class CaseSpool:
    """The JSON lines of a run's cases in an anonymous temporary file, each with its sort key, read back by
    position (``os.pread``): the lines are not kept in memory."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="llmeval-cases-")  # noqa: SIM115 - lives as long as the spool
        self._offsets = array("q")
        self._lengths = array("q")
        self._keys: list[str] = []
        self._end = 0
        self._dirty = False

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, key: str, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass") + b"\n"
        self._file.write(data)
        self._offsets.append(self._end)
        self._lengths.append(len(data) - 1)
        self._keys.append(key)
        self._end += len(data)
        self._dirty = True

    def key(self, i: int) -> str:
        return self._keys[i]

    def text(self, i: int) -> str:
        """The JSON text of the ``i``-th case appended."""
        if self._dirty:
            self._file.flush()
            self._dirty = False
        return os.pread(self._file.fileno(), self._lengths[i], self._offsets[i]).decode("utf-8", "surrogatepass")

    def order(self) -> list[int]:
        """The cases' indices sorted by key (stable: equal keys keep their arrival order)."""
        return sorted(range(len(self._keys)), key=self._keys.__getitem__)

    def close(self) -> None:
        self._file.close()


class SpooledCases(Sequence[dict[str, Any]]):
    """results.json's ``cases`` list, read from the spool when iterated (each case a fresh dict): what reporters
    see as ``doc["cases"]``. ``list(cases)`` makes a list of them all, which at 100 000 cases costs memory."""

    def __init__(self, spool: CaseSpool, order: Sequence[int]) -> None:
        self._spool = spool
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [json.loads(self._spool.text(j)) for j in self._order[i]]
        return dict(json.loads(self._spool.text(self._order[i])))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        text = self._spool.text
        for j in self._order:
            yield json.loads(text(j))

    def texts(self) -> Iterator[str]:
        """Each case's JSON text, in order (what results.json writes)."""
        text = self._spool.text
        for j in self._order:
            yield text(j)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpooledCases | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<SpooledCases: {len(self)} cases>"


class _RowCases:
    """A row's cases as CaseResults, read back from the spool each time they are iterated (a check's aggregate)."""

    def __init__(self, spool: CaseSpool, indices: Sequence[int]) -> None:
        self._spool, self._indices = spool, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[CaseResult]:
        text, fields, new = self._spool.text, CaseResult.__dataclass_fields__, object.__new__
        for j in self._indices:
            data = json.loads(text(j))
            if len(data) == len(fields) and all(k in fields for k in data):  # to_dict's own: all fields, in order
                result = new(CaseResult)
                result.__dict__.update(data)
                yield result
            else:
                yield CaseResult.from_dict(data)


class ResultCollector:
    """The controller's (or a plain run's) cases, streamed: ``add`` each as it is reported, ``document`` at the end.

    Per case in memory: its sort key and where its line is (in ``CaseSpool``), and its ``column`` in arrays; whole
    only if it is not plain (``aggregate.is_plain``)."""

    def __init__(self) -> None:
        self.spool = CaseSpool()
        self._outcome = array("b")
        self._kind = array("b")
        self._floats = array("d")  # score, latency_s, ttft_s, cost_usd per case
        self._ints = array("q")  # prompt_tokens, completion_tokens, cached, calls, retries per case
        self._special: dict[int, CaseResult] = {}

    def __len__(self) -> int:
        return len(self.spool)

    def add(self, result: CaseResult, text: str | None = None) -> None:
        """One finished case; ``text``: the JSON text of ``result.to_dict()`` if made already (its journal line)."""
        if text is None:
            text = encode_line(result.to_dict())
        i = len(self.spool)
        self.spool.append("\0".join((result.suite, result.model, result.case_id, result.nodeid)), text)
        (outcome, kind, score, latency, ttft, cost, ptok, ctok, cached, calls, retries) = column(result)
        self._outcome.append(_code(outcome))
        self._kind.append(_code(kind))
        self._floats.extend((_opt(score), _opt(latency), _opt(ttft), _opt(cost)))
        self._ints.extend((ptok, ctok, int(cached), calls, retries))
        if not is_plain(result):
            self._special[i] = result

    def _column(self, i: int) -> tuple[Any, ...]:
        f, n = self._floats, self._ints
        return (_NAMES[self._outcome[i]], _NAMES[self._kind[i]], _back(f[4 * i]), _back(f[4 * i + 1]),
                _back(f[4 * i + 2]), _back(f[4 * i + 3]), n[5 * i], n[5 * i + 1], bool(n[5 * i + 2]), n[5 * i + 3],
                n[5 * i + 4])

    def nodeids(self) -> set[str]:
        return {self.spool.key(i).rsplit("\0", 1)[1] for i in range(len(self.spool))}

    def results(self) -> Iterator[CaseResult]:
        """Every case as a CaseResult, in arrival order, read back one at a time."""
        for i in range(len(self.spool)):
            yield self._special.get(i) or CaseResult.from_dict(json.loads(self.spool.text(i)))

    def rows(self, order: list[int], check_aggregates: Mapping[str, AggregateFn] | None) -> list[dict[str, Any]]:
        """The suite x model rows (``aggregate.aggregate`` of the same cases): ``order`` sorts them by key."""
        rows: list[dict[str, Any]] = []
        start = 0
        while start < len(order):
            suite, model, _ = self.spool.key(order[start]).split("\0", 2)
            prefix = f"{suite}\0{model}\0"
            end = start
            while end < len(order) and self.spool.key(order[end]).startswith(prefix):
                end += 1
            indices = order[start:end]
            special = [self._special[i] for i in indices if i in self._special]
            rows.append(make_row(suite, model, map(self._column, indices), special, _RowCases(self.spool, indices),
                                 check_aggregates))
            start = end
        return rows

    def document(self, *, models: list[str], cache_mode: str, exit_status: int, invalid: list[dict[str, Any]],
                 workers: int, version: str, shard: str | None = None,
                 check_aggregates: Mapping[str, AggregateFn] | None = None) -> dict[str, Any]:
        """The results.json document, as ``aggregate.build_results`` makes it, with ``cases`` a
        :class:`SpooledCases` (written line by line by ``aggregate.write_results``)."""
        order = self.spool.order()
        return results_document(models=models, cache_mode=cache_mode, exit_status=exit_status, workers=workers,
                                version=version, shard=shard, suites=self.rows(order, check_aggregates),
                                cases=SpooledCases(self.spool, array("q", order)), invalid=invalid)
