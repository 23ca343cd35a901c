"""Vision judges: pixel pre-checks on images drawn here with Pillow, yes/no parsing, and the request that carries
the image."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from helpers.vision import circle, square
from PIL import Image

from pytest_llmeval.checks.images import (
    ImageProblem,
    PrecheckSpec,
    load_image,
    parse_yes_no,
    precheck,
    vision_messages,
)


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ pre-checks


def test_a_drawn_shape_passes_the_pre_checks() -> None:
    result = precheck(load_image(circle()), PrecheckSpec())
    assert result.ok and result.problems == ()
    assert result.stats["background"] == "#ffffff" and 0.15 < result.stats["detail"] < 0.25


@pytest.mark.parametrize(("image", "problem"), [
    (Image.new("RGB", (100, 100), "white"), "image is blank: a single flat colour #ffffff"),
    (Image.new("RGB", (100, 100), (12, 200, 40)), "image is blank: a single flat colour #0cc828"),
    (Image.new("RGBA", (100, 100), (0, 0, 0, 0)), "image is blank: every pixel is fully transparent"),
])
def test_blank_and_flat_images_fail(image: Image.Image, problem: str) -> None:
    result = precheck(load_image(image), PrecheckSpec())
    assert not result.ok and result.problems == (problem,)


def test_a_nearly_flat_image_fails_and_antialiasing_noise_is_background() -> None:
    speck = Image.new("RGB", (100, 100), "white")
    speck.putpixel((5, 5), (0, 0, 0))
    result = precheck(load_image(speck), PrecheckSpec())
    assert not result.ok and "only 0.010% of pixels differ from the background #ffffff" in result.reason
    # Pixels within the tolerance of the background (JPEG or antialiasing noise) do not count as detail.
    faint = np.full((100, 100, 3), 250, dtype=np.uint8)
    faint[::2, ::2] = 255
    assert "blank" in precheck(load_image(Image.fromarray(faint)), PrecheckSpec()).reason
    assert precheck(load_image(Image.fromarray(faint)), PrecheckSpec(tolerance=2)).ok


def test_too_small_reports_every_problem() -> None:
    result = precheck(load_image(Image.new("RGB", (10, 8), "white")), PrecheckSpec(min_width=16, min_height=16))
    assert result.problems == ("image is 10x8, smaller than the minimum 16x16",
                               "image is blank: a single flat colour #ffffff")
    assert precheck(load_image(circle(size=(300, 100), box=(10, 10, 90, 90))),
                    PrecheckSpec(min_width=300, min_height=100)).ok


def test_noise_is_not_blank_but_does_not_resemble_the_reference(tmp_path: Path) -> None:
    reference = tmp_path / "ref.png"
    square().save(reference)
    spec = PrecheckSpec(reference=reference, max_distance=10)
    assert precheck(load_image(noise()), PrecheckSpec()).ok  # detail everywhere
    result = precheck(load_image(noise()), spec)
    assert not result.ok and "does not resemble the reference ref.png" in result.reason
    assert result.stats["distance"] > 10


def test_reference_similarity_tells_the_right_shape_from_the_wrong_one(tmp_path: Path) -> None:
    reference = tmp_path / "ref.png"
    square().save(reference)
    spec = PrecheckSpec(reference=reference, max_distance=10)
    same = precheck(load_image(square()), spec)
    recoloured = precheck(load_image(square("red")), spec)  # pHash compares layout and shape, not colour
    wrong = precheck(load_image(circle(box=(40, 40, 140, 140))), spec)
    assert same.ok and same.stats["distance"] == 0
    assert recoloured.ok and recoloured.stats["distance"] <= 10
    assert not wrong.ok and wrong.stats["distance"] > 10


def test_load_image_from_path_bytes_and_pil(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    circle().save(path)
    from_path, from_bytes = load_image(path), load_image(path.read_bytes())
    assert from_path.sha256 == from_bytes.sha256 and from_path.data == path.read_bytes()
    assert from_path.mime == "image/png" and (from_path.width, from_path.height) == (200, 200)
    from_pil = load_image(circle())
    assert np.array_equal(np.asarray(from_pil.pil().convert("RGB")), np.asarray(circle()))
    # BMP is re-encoded as PNG for sending; the hash stays the original file's.
    bmp = tmp_path / "c.bmp"
    circle().save(bmp)
    sent = load_image(bmp)
    assert sent.mime == "image/png" and sent.data[:4] == b"\x89PNG" and sent.original == bmp.read_bytes()


@pytest.mark.parametrize(("src", "message"), [
    (b"not an image at all", "does not decode as an image"),
    (b"", "the file is empty"),
    ("missing.png", "missing.png: no such file"),
])
def test_unusable_images_say_why(src: bytes | str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match=message):
        load_image(tmp_path / src if isinstance(src, str) else src)


def test_a_truncated_png_does_not_decode(tmp_path: Path) -> None:
    buf = io.BytesIO()
    noise().save(buf, format="PNG")
    with pytest.raises(ImageProblem, match="does not decode"):
        load_image(buf.getvalue()[: len(buf.getvalue()) // 2])


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("reply", "answer", "reason"), [
    ("Yes.", True, ""),
    ("**No**, the circle is blue.", False, "the circle is blue"),
    ('{"answer": "yes", "reason": "a red circle"}', True, "a red circle"),
    ('```json\n{"Answer": false, "Reasoning": "no circle"}\n```', False, "no circle"),
    ("Answer: no", False, ""),
    ("The answer is yes, clearly.", True, "clearly"),
    ("There is no red circle in this image.", False, "There is no red circle in this image"),
    ("Nope", False, ""),
])
def test_yes_no_replies_are_parsed(reply: str, answer: bool, reason: str) -> None:
    parsed = parse_yes_no(reply)
    assert (parsed.answer, parsed.reason, parsed.problem) == (answer, reason, None)


@pytest.mark.parametrize(("reply", "problem"), [
    ("", "empty reply"),
    ("A red circle on white.", "no yes/no answer found"),
    ("Yes or no?", "the reply says both yes and no"),
    ("Hard to say: yes in parts, no in others", "the reply says both yes and no"),
    ('{"answer": "maybe"}', "answer 'maybe' is neither yes nor no"),
])
def test_unusable_replies_are_unusable(reply: str, problem: str) -> None:
    parsed = parse_yes_no(reply)
    assert parsed.answer is None and parsed.problem == problem


def test_the_request_carries_the_image_as_a_data_url() -> None:
    image = load_image(circle())
    messages = vision_messages("Is there a red circle?", image)
    parts = messages[-1]["content"]
    assert parts[0]["type"] == "text" and "Is there a red circle?" in parts[0]["text"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == image.data
