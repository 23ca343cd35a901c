"""Batched generation on the local model (local_generate.Batcher, generate_batch) and the prefetch pool planning
``local/`` calls: a tiny random Llama built from a config stands in for SmolLM2 (a word-level tokenizer, no chat
template, so prompts are the messages' text). Greedy answers generated in a batch must be the answers generated
alone; a session with batching must give the same outcomes and results as one without."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.providers import local_generate
from pytest_llmeval.providers.local_generate import Batcher, generate, generate_batch

WORDS = ["<unk>", "<eos>", "the", "capital", "of", "france", "is", "paris", "japan", "tokyo", "what", "a", "city",
         "name", "one", "big", "river", "and", "sea", "answer"]


class Tiny:
    """What local.LoadedModel offers generation: tokenizer, model, lock (and spec, for progress lines)."""

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tokenizer, self.model, self.lock = tokenizer, model, threading.Lock()


def build_tiny(seed: int = 7) -> tuple[Any, Any]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                        pad_token="<eos>")
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=1,
                         pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    pytest.importorskip("transformers")
    return Tiny(*build_tiny())


PROMPTS = ["what is the capital of france", "name one big river", "japan", "what is a city and a sea",
           "the capital of japan is", "answer", "name one city of france and one of japan", "big sea"]


def request(prompt: str, **params: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    return [{"role": "user", "content": prompt}], {"temperature": 0, "max_tokens": 12, **params}


def test_a_batch_gives_the_answers_generated_alone(tiny: Tiny) -> None:
    requests = [request(p) for p in PROMPTS]
    alone = [generate_batch(tiny, [r])[0] for r in requests]  # a batch of one is the unpadded generation
    assert generate_batch(tiny, requests) == alone
    assert len({a.prompt_tokens for a in alone}) > 1  # prompts of different lengths: rows were padded
    assert {a.finish_reason for a in alone} <= {"stop", "length"}


def test_mixed_parameters_are_grouped_and_keep_their_order(tiny: Tiny) -> None:
    # (stop strings need a real tokenizer's vocabulary: tests/realmodel/test_local_batching_realmodel.py)
    requests = [request(PROMPTS[0]), request(PROMPTS[1], max_tokens=3), request(PROMPTS[2], max_tokens=5),
                request(PROMPTS[3]), request(PROMPTS[4], max_tokens=3), request(PROMPTS[5], temperature=0.8, seed=3)]
    alone = [generate_batch(tiny, [r])[0] for r in requests]
    assert generate_batch(tiny, requests) == alone
    assert alone[1].completion_tokens <= 3 and alone[4].completion_tokens <= 3


def test_rows_of_different_max_tokens_share_a_batch_and_each_stops_at_its_own(tiny: Tiny,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch (not one per max_tokens), and every answer is the one generated alone: a row cut at its own
    limit ends with finish_reason "length" and exactly that many tokens, while the longer rows go on."""
    limits = [12, 3, 5, 1, 12, 7, 2, 12]
    requests = [request(p, max_tokens=m) for p, m in zip(PROMPTS, limits, strict=True)]
    alone = [generate_batch(tiny, [r])[0] for r in requests]
    batches: list[int] = []
    real = local_generate._generate_batch

    def counted(loaded: Any, batch: Any) -> Any:
        batches.append(len(batch))
        return real(loaded, batch)

    monkeypatch.setattr(local_generate, "_generate_batch", counted)
    assert generate_batch(tiny, requests) == alone
    assert batches == [len(PROMPTS)]
    assert all(a.completion_tokens <= m for a, m in zip(alone, limits, strict=True))
    assert any(a.finish_reason == "length" and a.completion_tokens == m < 12
               for a, m in zip(alone, limits, strict=True))
    assert any(a.completion_tokens > 5 for a in alone)  # the long rows went on past the short rows' limits


def test_threads_calling_generate_at_once_share_batches(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    batcher = Batcher(tiny)
    monkeypatch.setattr(tiny, "_llmeval_batcher", batcher, raising=False)
    expected = [generate_batch(tiny, [request(p)])[0] for p in PROMPTS]
    got: dict[int, Any] = {}
    start = threading.Barrier(len(PROMPTS))

    def call(index: int) -> None:
        start.wait()
        got[index] = generate(tiny, *request(PROMPTS[index]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[i] for i in range(len(PROMPTS))] == expected
    assert sum(batcher.sizes) == len(PROMPTS) and max(batcher.sizes) > 1


LONG = " ".join(["what is the capital of france and"] * 30)  # 180 words: more than twice the others plus 64


def test_prompts_of_very_different_lengths_are_not_padded_into_one_batch(tiny: Tiny,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A short question padded to a long few-shot prompt would cost that prompt's whole prefill: the batch takes
    the oldest request and the queued ones of similar length; the others make the next batch."""
    batcher = Batcher(tiny)
    monkeypatch.setattr(tiny, "_llmeval_batcher", batcher, raising=False)
    prompts = [PROMPTS[0], LONG, PROMPTS[1], PROMPTS[2]]
    expected = [generate_batch(tiny, [request(p)])[0] for p in prompts]
    assert expected[1].prompt_tokens > local_generate.PAD_RATIO * expected[0].prompt_tokens + local_generate.PAD_SLACK
    got: dict[int, Any] = {}
    start = threading.Barrier(len(prompts))

    def call(index: int) -> None:
        start.wait()
        got[index] = generate(tiny, *request(prompts[index]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[i] for i in range(len(prompts))] == expected
    assert sorted(batcher.sizes) == [1, 3]  # the long prompt alone, the three short ones together
    # generate_batch splits the same way, and gives the same answers
    assert generate_batch(tiny, [request(p) for p in prompts]) == expected


def test_batch_of_takes_the_oldest_and_its_group_within_the_padding_bound(tiny: Tiny) -> None:
    prepared = [local_generate._prepare(tiny, *request(p, **params)) for p, params in [
        (LONG, {}), (PROMPTS[0], {}), (LONG + " paris", {}), (LONG, {"max_tokens": 3}), (LONG, {}),
        (LONG, {"temperature": 0.5})]]
    # not the short one, nor sampling; another max_tokens joins (each row stops at its own)
    assert local_generate._batch_of(prepared, 16) == [0, 2, 3, 4]
    assert local_generate._batch_of(prepared, 2) == [0, 2]
    assert local_generate._batch_of(prepared[1:], 16) == [0]
    assert local_generate._batch_of(prepared[5:], 16) == [0]  # the oldest is always taken


def test_a_failing_batch_fails_each_of_its_callers(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Tiny):
        pass

    broken = Broken(tiny.tokenizer, None)  # no model: generating raises AttributeError
    with pytest.raises(AttributeError):
        generate(broken, *request("japan"))
    assert local_generate.batcher(broken).sizes == [1]
    # the batcher is free again: a bad request is still reported as before, before it is queued
    with pytest.raises(ValueError, match="max_tokens"):
        generate(broken, *request("japan", max_tokens=0))


def test_progress_lines_of_a_long_generation(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(local_generate, "PROGRESS_EVERY_S", 0.0)
    previous = local_generate.set_reporter(lines.append)
    try:
        generate_batch(tiny, [request(p, max_tokens=4) for p in PROMPTS[:3]])
    finally:
        local_generate.set_reporter(previous)
    assert lines and all(line.startswith("local model: generated ") for line in lines)
    assert any(line.startswith("local model: generated 1/4 tokens of 3 answers") for line in lines)


# ------------------------------------------------------------------------------------------ whole sessions


SUITE = """\
suite: tiny
kind: qna
params: {temperature: 0, max_tokens: 10}
cases:
""" + "".join(f"""  - id: c{i}
    question: {prompt}
    expect:
      - contains: {word}
""" for i, (prompt, word) in enumerate(zip(PROMPTS, ["paris", "river", "the", "sea", "tokyo", "a", "city", "big"],
                                             strict=True)))


@pytest.fixture
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer, model = build_tiny()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_session(pytester: pytest.Pytester, model_dir: Path, *extra: str, subprocess: bool = False
                ) -> tuple[pytest.RunResult, dict[str, Any]]:
    (pytester.path / "cases").mkdir(exist_ok=True)
    (pytester.path / "cases" / "tiny.yaml").write_text(SUITE)
    run = pytester.runpytest_subprocess if subprocess else pytester.runpytest
    result = run(f"--llm=local/{model_dir}", "--llm-cache=off", "-p", "no:cacheprovider", *extra)
    data = json.loads((pytester.path / ".llmeval" / "results.json").read_text())
    return result, data


def answers(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c["case_id"], c["outcome"], c["answer"], c["prompt_tokens"], c["completion_tokens"], c["checks"])
            for c in data["cases"]]


def test_batched_session_equals_the_serial_one(pytester: pytest.Pytester, tiny_dir: Path) -> None:
    from pytest_llmeval.providers import local

    serial, serial_data = run_session(pytester, tiny_dir, "--llm-concurrency=1")
    sizes = local_generate.batcher(local._LOADED[str(tiny_dir.resolve())]).sizes
    assert set(sizes) == {1}  # no prefetch pool: one call at a time, as before
    before = len(sizes)
    batched, batched_data = run_session(pytester, tiny_dir, "--llm-concurrency=8")
    assert max(sizes[before:]) > 1  # the pool's calls were generated together
    outcomes = serial.parseoutcomes()
    batched.assert_outcomes(**{k: v for k, v in outcomes.items() if k in ("passed", "failed", "skipped", "errors")})
    assert sum(v for k, v in outcomes.items() if k in ("passed", "failed")) == len(PROMPTS)
    assert answers(batched_data) == answers(serial_data) and answers(serial_data)
    order = [line for line in serial.outlines if "tiny.yaml::" in line]
    assert [line for line in batched.outlines if "tiny.yaml::" in line] == order


def test_session_reports_the_load_and_is_quiet_under_qq(pytester: pytest.Pytester, tiny_dir: Path) -> None:
    # A real process, so pytest's capture of the running test is the one a user has: the lines still show.
    shown, _ = run_session(pytester, tiny_dir, "-q", subprocess=True)
    shown.stdout.fnmatch_lines([f"llmeval: loading local/{tiny_dir}", f"llmeval: loaded local/{tiny_dir} in *s"])
    quiet, _ = run_session(pytester, tiny_dir, "-qq", subprocess=True)
    assert not [line for line in quiet.outlines if line.startswith("llmeval: ")]


def test_xdist_workers_batch_too_and_print_no_progress(pytester: pytest.Pytester, tiny_dir: Path) -> None:
    serial, serial_data = run_session(pytester, tiny_dir, "--llm-concurrency=1")
    workers, workers_data = run_session(pytester, tiny_dir, "-n", "2", "-q", subprocess=True)
    assert sorted(answers(workers_data)) == sorted(answers(serial_data))
    assert workers.ret == serial.ret
    assert not [line for line in workers.outlines if line.startswith("llmeval: ")]
