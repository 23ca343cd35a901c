"""Local vision-language models (``local-vision/<dir>`` through litellm), end to end and offline.

The model is a tiny LLaVA with random weights that :mod:`helpers.tiny_vlm` builds into a temporary directory
(no download, about a second): it goes through the same ``AutoProcessor`` / ``AutoModelForImageTextToText``
loading, chat template, image preprocessing, generation and decoding as a real SmolVLM or LLaVA directory,
so only the answers are noise.  One module-scoped build is shared by all tests, and the module's
per-process cache means it is loaded once.
"""

from __future__ import annotations

import os

# Before litellm is imported: use the bundled model cost map instead of fetching it over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import base64
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmeval.providers import local_vision
from pytest_llmeval.providers.local_vision import (
    PROVIDER,
    Generation,
    LocalVisionError,
    answer,
    image_from_messages,
    load,
    resolve_vision_dir,
)

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "tokenizers", "PIL")),
    reason="needs torch, transformers and pillow: pip install 'pytest-llmeval[local]' pillow",
)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


def _picture(size: tuple[int, int] = (48, 40)):
    """A white picture with a red square and a blue circle, drawn with Pillow."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, 20, 20), fill=(220, 30, 30))
    draw.ellipse((24, 16, 44, 36), fill=(30, 60, 220))
    return image


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _request(url: str | None, question: str = "What color is the square?") -> list[dict]:
    content: list[dict] = [{"type": "text", "text": question}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    return [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": content},
    ]


# --------------------------------------------------------------------------------------- resolution


def test_import_is_cheap() -> None:
    """Importing the module must not drag in torch, transformers, litellm or Pillow."""
    code = (
        "import sys, pytest_llmeval.providers.local_vision as m\n"
        "heavy = [n for n in ('torch', 'transformers', 'litellm', 'PIL') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert m.PROVIDER == 'local-vision'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LocalVisionError) as info:
        resolve_vision_dir(str(missing))
    message = str(info.value)
    assert message.startswith(f"local-vision/{missing}: no such directory")
    assert "config.json" in message  # says what a valid directory looks like


def test_dir_without_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LocalVisionError) as info:
        resolve_vision_dir(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"local-vision/{tmp_path}: ")
    assert "has no config.json" in message


def test_file_is_not_a_model_dir(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text("{}")
    with pytest.raises(LocalVisionError, match="is a file, not a directory"):
        resolve_vision_dir(str(file))


def test_relative_and_home_paths(vlm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(vlm_dir.parent)
    assert resolve_vision_dir(vlm_dir.name) == vlm_dir.resolve()
    monkeypatch.setenv("HOME", str(vlm_dir.parent))
    assert resolve_vision_dir(f"~/{vlm_dir.name}") == vlm_dir.resolve()


# ------------------------------------------------------------------------------------------- images


def test_image_from_messages_decodes_a_data_url() -> None:
    picture = _picture()
    image, text, system = image_from_messages(_request(_data_url(picture), "What is this?"))
    assert image is not None
    assert image.mode == "RGB" and image.size == picture.size
    assert image.tobytes() == picture.tobytes()
    assert text == "What is this?"
    assert system == "Answer in one word."


def test_image_from_messages_reads_paths_and_joins_text(tmp_path: Path) -> None:
    picture = _picture()
    file = tmp_path / "picture.png"
    picture.save(file)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": file.as_uri()}}, {"type": "text", "text": "One."}],
        },
        {"role": "assistant", "content": "ignored"},
        {"role": "user", "content": "Two."},
    ]
    image, text, system = image_from_messages(messages)
    assert image is not None and image.tobytes() == picture.tobytes()
    assert text == "One.\nTwo."
    assert system is None

    image, _, _ = image_from_messages([{"role": "user", "content": [{"type": "image_url", "image_url": str(file)}]}])
    assert image is not None and image.size == picture.size


def test_image_from_messages_without_image() -> None:
    assert image_from_messages(_request(None, "Hi")) == (None, "Hi", "Answer in one word.")


def test_unreadable_image_is_a_value_error() -> None:
    bogus = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(ValueError, match="cannot read the image"):
        image_from_messages(_request(bogus))


# --------------------------------------------------------------------------------------- load/answer


def test_load_once_per_process(vlm_dir: Path) -> None:
    first = load(vlm_dir)
    assert load(vlm_dir) is first
    assert load(Path(str(vlm_dir) + "/.")) is first  # another spelling of the same directory
    assert first.kind == "processor"
    assert first.device in ("cpu", "cuda")
    assert not first.model.training


def test_answer_runs_the_model(vlm_dir: Path) -> None:
    loaded = load(vlm_dir)
    result = answer(loaded, _picture(), "What color is the square?", max_new_tokens=5)
    assert isinstance(result, Generation)
    assert isinstance(result.text, str)
    # 16 image-patch tokens plus the question and chat template.
    assert result.prompt_tokens > 16
    assert 0 < result.completion_tokens <= 5
    assert result.finish_reason in ("stop", "length")
    # Greedy decoding is deterministic, and a non-RGB image is converted first.
    again = answer(loaded, _picture().convert("RGBA"), "What color is the square?", max_new_tokens=5)
    assert again == result


def test_answer_with_system_and_sampling(vlm_dir: Path) -> None:
    loaded = load(vlm_dir)
    plain = answer(loaded, _picture(), "What color is the square?", max_new_tokens=3)
    with_system = answer(loaded, _picture(), "What color is the square?", system="Be brief.", max_new_tokens=3)
    assert with_system.prompt_tokens > plain.prompt_tokens  # the system text reached the prompt
    sampled = answer(loaded, _picture(), "Describe the image.", max_new_tokens=3, temperature=0.9)
    assert isinstance(sampled.text, str) and sampled.completion_tokens > 0
    with pytest.raises(ValueError, match="max_tokens"):
        answer(loaded, _picture(), "x", max_new_tokens=0)


def test_render_prompt_uses_the_chat_template_and_system_turn(vlm_dir: Path) -> None:
    processor = load(vlm_dir).processor
    text = local_vision._render_prompt(processor, "What is this?", "Be brief.")
    assert text == "SYSTEM: Be brief.\nUSER: <image> What is this?\nASSISTANT:"


class _StubProcessor:
    """Just enough of a processor for _render_prompt: a template that may drop the system turn."""

    image_token = "<img>"

    def __init__(self, chat_template: str | None, renders_system: bool = True) -> None:
        self.chat_template = chat_template
        self.renders_system = renders_system

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool, tokenize: bool) -> str:
        assert add_generation_prompt and not tokenize
        turns = [m for m in messages if self.renders_system or m["role"] != "system"]
        return "|".join(f"{m['role']}={[p.get('text', '<img>') for p in m['content']]}" for m in turns)


def test_render_prompt_without_template_or_system_turn() -> None:
    no_template = _StubProcessor(None)
    expected = "USER: <img>\nBe brief.\n\nWhat?\nASSISTANT:"
    assert local_vision._render_prompt(no_template, "What?", "Be brief.") == expected
    drops_system = _StubProcessor("template", renders_system=False)
    assert local_vision._render_prompt(drops_system, "What?", "Be brief.") == "user=['<img>', 'Be brief.\\n\\nWhat?']"
    keeps_system = _StubProcessor("template")
    assert local_vision._render_prompt(keeps_system, "What?", "Be brief.") == (
        "system=['Be brief.']|user=['<img>', 'What?']"
    )


def test_custom_code_model_answers_through_query(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A moondream2-style directory (auto_map + query()) loads with trust_remote_code and answers via query."""
    from helpers.tiny_vlm import build_tiny_custom_vlm
    from PIL import Image

    loaded = load(build_tiny_custom_vlm(tmp_path_factory.mktemp("tiny-custom")))
    assert loaded.kind == "custom"
    result = answer(loaded, Image.new("RGB", (30, 20), (250, 10, 5)), "What colour?", system="One word.")
    assert result == Generation(text="red", prompt_tokens=4, completion_tokens=1, finish_reason="stop")
    assert loaded.model.questions == ["One word.\n\nWhat colour?"]


# ---------------------------------------------------------------------------------------- litellm


@pytest.fixture(scope="module")
def registered() -> None:
    local_vision.register()


def test_register_is_idempotent_and_keeps_other_providers(registered: None) -> None:
    import litellm

    before = litellm.custom_provider_map
    local_vision.register()
    assert litellm.custom_provider_map is before
    entries = [e for e in before if e.get("provider") == PROVIDER]
    assert len(entries) == 1
    assert isinstance(entries[0]["custom_handler"], local_vision.LocalVisionLLM)


def test_litellm_completion(vlm_dir: Path, registered: None) -> None:
    import litellm

    response = litellm.completion(
        model=f"{PROVIDER}/{vlm_dir}", messages=_request(_data_url(_picture())), max_tokens=4
    )
    content = response.choices[0].message.content
    assert isinstance(content, str)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 16
    assert 0 < response.usage.completion_tokens <= 4
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    # The same request through the handler gives the same greedy answer as answer() itself.
    question = "What color is the square?"
    direct = answer(load(vlm_dir), _picture(), question, system="Answer in one word.", max_new_tokens=4)
    assert content == direct.text


def test_litellm_acompletion(vlm_dir: Path, registered: None) -> None:
    import asyncio

    import litellm

    response = asyncio.run(
        litellm.acompletion(model=f"{PROVIDER}/{vlm_dir}", messages=_request(_data_url(_picture())), max_tokens=2)
    )
    assert isinstance(response.choices[0].message.content, str)
    assert response.usage.completion_tokens > 0


def test_litellm_request_without_image(vlm_dir: Path, registered: None) -> None:
    import litellm

    with pytest.raises(litellm.exceptions.BadRequestError) as info:
        litellm.completion(model=f"{PROVIDER}/{vlm_dir}", messages=_request(None), max_tokens=2)
    message = str(info.value)
    assert "has no image" in message and "image_url" in message


def test_litellm_bad_dir(tmp_path: Path, registered: None) -> None:
    import litellm

    with pytest.raises(litellm.exceptions.BadRequestError, match="no config.json"):
        litellm.completion(model=f"{PROVIDER}/{tmp_path}", messages=_request(_data_url(_picture())))
