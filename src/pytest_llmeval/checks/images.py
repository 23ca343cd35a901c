"""Images and vision judges: load an image, pre-check its pixels, ask a vision model a yes/no question.

Seed 000 asked a vision model whether a generated program's render showed what was asked; the cheap checks
come first. :func:`precheck` (Pillow and numpy, deterministic, milliseconds) fails an image that is missing,
does not decode, is too small, is blank or a single flat colour, or does not resemble a reference image
(perceptual-hash distance, ``imagehash``); only an image that passes is shown to the vision model.

The vision model answers yes or no with a short reason. :func:`parse_yes_no` reads that from JSON, from a
leading "Yes." / "**No**", from "Answer: yes", or from prose that says only one of the two; anything else is
unusable, retried once with a correction, and then *unscored*, as for text judges.

Pillow, numpy and imagehash are imported when an image is first handled, never at plugin import.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.cases.schema import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # defined with the case schema, which checks it
from pytest_llmeval.core.errors import LLMEvalError

if TYPE_CHECKING:
    from PIL.Image import Image

# Formats vision APIs accept as they are; others (BMP, TIFF) are re-encoded as PNG before sending.
SENDABLE = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_SIDE = 2048  # a larger image is downscaled (as PNG) before it is sent: providers cap sizes and charge per tile
MAX_PIXELS_SCANNED = 4_000_000  # the flat-colour pre-check samples larger images (nearest neighbour)
VISION_PROMPT_VERSION = "1"
VISION_PARAMS = {"temperature": 0, "max_tokens": 120}
REASON_CHARS = 300

SYSTEM = (
    "You are a careful visual inspector. You look at one image and answer one yes/no question about what it "
    'shows. Reply with JSON only: {"answer": "yes" or "no", "reason": "<one short sentence>"}.'
)
FIX_PROMPT = ('Your reply could not be used ({problem}). Look at the image again and reply with JSON only: '
              '{{"answer": "yes" or "no", "reason": "<one short sentence>"}}.')
INSTALL_HINT = "pip install 'pytest-llmeval[vision]' (Pillow, imagehash)"


class ImageProblem(LLMEvalError):
    """The image cannot be used: missing, unreadable, not an image. Its message is the check's reason."""


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the vision extra
        raise ImageProblem(f"vision checks need Pillow: {INSTALL_HINT}") from None
    return Image


@dataclass(frozen=True)
class ImageData:
    """One image as it will be judged: the bytes sent to the model, their type, and the original's hash."""

    data: bytes  # what is sent: the original file's bytes, or a PNG re-encoding (other format, too large)
    mime: str
    sha256: str  # of the original bytes: the vision cache key's image part
    width: int
    height: int
    source: str  # a path, "<bytes>" or "<PIL image>"
    original: bytes = field(repr=False, default=b"")

    def pil(self) -> Image:
        image = _pil().open(io.BytesIO(self.original or self.data))
        image.load()
        return image

    def data_url(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")


def load_image(src: str | Path | bytes | Image) -> ImageData:
    """A path, raw bytes or a PIL image as :class:`ImageData`; raises ImageProblem with a clear reason."""
    image_mod = _pil()
    if isinstance(src, str | Path):
        path = Path(src)
        if not path.is_file():
            raise ImageProblem(f"{path.name}: no such file (the program did not write it?)")
        raw, source = path.read_bytes(), str(path)
    elif isinstance(src, bytes | bytearray | memoryview):
        raw, source = bytes(src), "<bytes>"
    elif isinstance(src, image_mod.Image):
        buf = io.BytesIO()
        src.save(buf, format="PNG")
        raw, source = buf.getvalue(), "<PIL image>"
    else:
        raise ImageProblem(f"expected an image path, bytes or a PIL image, got {type(src).__name__}")
    name = Path(source).name if source[0] != "<" else source
    if not raw:
        raise ImageProblem(f"{name}: the file is empty")
    try:
        image = image_mod.open(io.BytesIO(raw))
        image.load()  # verify() misses truncated data; a full decode does not
    except Exception as exc:
        raise ImageProblem(f"{name}: does not decode as an image ({type(exc).__name__}: {exc})") from None
    fmt = (image.format or "").upper()
    width, height = image.size
    data, mime = raw, SENDABLE.get(fmt)
    if mime is None or max(width, height) > MAX_SIDE or getattr(image, "is_animated", False):
        frame = image.convert("RGBA") if image.mode not in ("RGB", "RGBA", "L", "LA") else image
        if max(width, height) > MAX_SIDE:
            frame = frame.copy()
            frame.thumbnail((MAX_SIDE, MAX_SIDE))
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return ImageData(data=data, mime=mime, sha256=hashlib.sha256(raw).hexdigest(), width=width, height=height,
                     source=source, original=raw)


# ------------------------------------------------------------------------------------------ pre-checks


@dataclass(frozen=True)
class PrecheckSpec:
    """The pixel checks run before any vision model sees an image."""

    min_width: int = 16
    min_height: int = 16
    min_detail: float = 0.002  # share of pixels that must differ from the dominant (background) colour
    tolerance: int = 8  # per channel: a pixel this close to the background counts as background (antialiasing)
    reference: Path | None = None  # an image the output should resemble
    max_distance: int = 10  # largest perceptual-hash (pHash, 64 bits) Hamming distance to the reference


@dataclass(frozen=True)
class PrecheckResult:
    ok: bool
    problems: tuple[str, ...]
    stats: dict[str, Any]

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


def _hex(rgb: Any) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def detail_stats(image: Image, tolerance: int = 8) -> dict[str, Any]:
    """The dominant colour (over white, for transparent images) and the share of pixels that differ from it."""
    import numpy as np

    image_mod = _pil()
    rgba = image.convert("RGBA")
    alpha_low, alpha_high = rgba.getchannel("A").getextrema()
    if alpha_high == 0:
        return {"transparent": True, "background": None, "detail": 0.0}
    flat = image_mod.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    rgb = flat.convert("RGB")
    w, h = rgb.size
    if w * h > MAX_PIXELS_SCANNED:  # an unbiased sample of the pixels: nearest neighbour keeps exact colours
        scale = (MAX_PIXELS_SCANNED / (w * h)) ** 0.5
        rgb = rgb.resize((max(1, int(w * scale)), max(1, int(h * scale))), image_mod.Resampling.NEAREST)
    arr = np.asarray(rgb, dtype=np.int16).reshape(-1, 3)
    packed = (arr[:, 0].astype(np.int32) << 16) | (arr[:, 1].astype(np.int32) << 8) | arr[:, 2].astype(np.int32)
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[int(np.argmax(counts))])
    background = np.array([(top >> 16) & 255, (top >> 8) & 255, top & 255], dtype=np.int16)
    differs = np.abs(arr - background).max(axis=1) > tolerance
    return {"transparent": False, "background": _hex(background), "detail": float(differs.mean()),
            "colours": int(len(values))}


def perceptual_distance(a: Image, b: Image) -> int:
    """Hamming distance of the two images' 64-bit perceptual hashes (0 = alike, ~32 = unrelated)."""
    try:
        import imagehash
    except ImportError:  # pragma: no cover - a dependency of the vision extra
        raise ImageProblem(f"reference comparison needs imagehash: {INSTALL_HINT}") from None
    return int(imagehash.phash(a.convert("RGB")) - imagehash.phash(b.convert("RGB")))


def precheck(image: ImageData, spec: PrecheckSpec) -> PrecheckResult:
    """Run the pixel pre-checks; every problem found is listed (not just the first)."""
    problems: list[str] = []
    stats: dict[str, Any] = {"width": image.width, "height": image.height}
    if image.width < spec.min_width or image.height < spec.min_height:
        problems.append(f"image is {image.width}x{image.height}, smaller than the minimum "
                        f"{spec.min_width}x{spec.min_height}")
    pil = image.pil()
    detail = detail_stats(pil, spec.tolerance)
    stats.update(background=detail["background"], detail=round(detail["detail"], 6))
    if detail["transparent"]:
        problems.append("image is blank: every pixel is fully transparent")
    elif detail["detail"] == 0:
        problems.append(f"image is blank: a single flat colour {detail['background']}")
    elif detail["detail"] < spec.min_detail:
        problems.append(f"image is nearly blank: only {detail['detail']:.3%} of pixels differ from the background "
                        f"{detail['background']} (min_detail {spec.min_detail:.2%})")
    if spec.reference is not None:
        reference = load_image(spec.reference)
        distance = perceptual_distance(pil, reference.pil())
        stats.update(reference=str(spec.reference), distance=distance, max_distance=spec.max_distance)
        if distance > spec.max_distance:
            problems.append(f"image does not resemble the reference {spec.reference.name}: perceptual-hash distance "
                            f"{distance} > max_distance {spec.max_distance}")
    return PrecheckResult(not problems, tuple(problems), stats)


# ------------------------------------------------------------------------------------------ the judge


def vision_messages(question: str, image: ImageData) -> list[dict[str, Any]]:
    """The request to the vision model: the question as text, the image as an OpenAI-style image part."""
    text = f"Question: {question.strip()}\nAnswer yes or no, with a short reason."
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image.data_url()}}]}]


@dataclass(frozen=True)
class YesNo:
    """A parsed yes/no reply, or the problem that made it unusable."""

    answer: bool | None
    reason: str = ""
    problem: str | None = None


_YES = {"yes", "y", "yeah", "yep", "true", "correct", "affirmative"}
_NO = {"no", "n", "nope", "false", "incorrect", "negative"}
_ANSWER_KEYS = ("answer", "verdict", "result", "response", "value")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification")
_LEAD = re.compile(r"^\s*(?:(?:final\s+)?answer|a|verdict|response)\s*[:\-]\s*|^\s*the\s+answer\s+is\s*:?\s*",
                   re.IGNORECASE)
_ANSWER_IS = re.compile(r"\b(?:answer|verdict)\s*(?:is|:|=)\s*[\"'*`]*(yes|no)\b", re.IGNORECASE)


def _word(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        w = value.strip().strip(".!*`'\" ").lower()
        return True if w in _YES else False if w in _NO else None
    return None


def _json_reply(text: str) -> YesNo | None:
    from pytest_llmeval.checks.judge import json_objects

    for obj in json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        key = next((k for k in _ANSWER_KEYS if k in lowered), None)
        if key is None:
            continue
        reason = next((str(lowered[k]) for k in _REASON_KEYS if lowered.get(k)), "")[:REASON_CHARS]
        answer = _word(lowered[key])
        if answer is None:
            return YesNo(None, reason, f"{key} {lowered[key]!r} is neither yes nor no")
        return YesNo(answer, reason)
    return None


def _clean_reason(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" .,:;-*`'\"\n")[:REASON_CHARS]


def parse_yes_no(text: str) -> YesNo:
    """Read a yes/no answer and a reason from a vision model's reply, however it was phrased.

    Tried in order: a JSON object with an answer key (fenced or inline); a reply whose first word is yes or
    no ("Yes.", "**No**, the circle is blue", "Answer: yes"); "the answer is no" anywhere; prose in which
    only one of the words yes / no occurs. Both or neither is unusable.
    """
    text = (text or "").strip()
    if not text:
        return YesNo(None, "", "empty reply")
    parsed = _json_reply(text)
    if parsed is not None:
        return parsed
    head = _LEAD.sub("", text.lstrip("*_`#>\"' "), count=1)
    if re.match(r"[\W_]*(yes|no)\W*(?:/|or|and)\W*(yes|no)\b", head, re.IGNORECASE):
        return YesNo(None, "", "the reply says both yes and no")
    m = re.match(r"[\W_]*([A-Za-z]+)\b(.*)", head, re.DOTALL)
    if m:
        first = _word(m.group(1))
        if first is not None and m.group(1).lower() not in ("y", "n", "a"):
            return YesNo(first, _clean_reason(m.group(2)))
    found = {m.group(1).lower() for m in _ANSWER_IS.finditer(text)}
    if len(found) == 1:
        return YesNo(found.pop() == "yes", _clean_reason(_ANSWER_IS.sub(" ", text)))
    words = {w.lower() for w in re.findall(r"\b(yes|no)\b", text, re.IGNORECASE)}
    if words == {"yes"}:
        return YesNo(True, _clean_reason(text))
    if words == {"no"}:
        return YesNo(False, _clean_reason(text))
    if words:
        return YesNo(None, "", "the reply says both yes and no")
    return YesNo(None, "", "no yes/no answer found")
