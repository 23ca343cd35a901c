"""The image of a ``local-vision/`` request: decoding the ``image_url`` parts of OpenAI chat messages.

An image comes inline (a ``data:`` URL), as a ``file://`` URL or as a local file path; nothing is downloaded.
Pillow is imported only when an image is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["PROVIDER", "image_from_messages", "to_rgb"]

log = logging.getLogger(__name__)

#: The litellm provider prefix: ``local-vision/<model directory>`` (local_vision.py's, defined here, below it).
PROVIDER = "local-vision"


def to_rgb(image: Image) -> Image:
    """``image`` as RGB; transparent areas become white rather than black."""
    from PIL import Image as PILImage

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open_image(url: str) -> Image:
    """Decode an ``image_url``: a ``data:`` URL, a ``file://`` URL or a local file path.  ValueError if not."""
    import urllib.parse
    import urllib.request

    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    url = url.strip()
    shown = url if len(url) <= 60 else url[:57] + "..."
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep:
            raise ValueError(f"malformed data: URL {shown!r} (no ',' before the image data)")
        try:
            if header.endswith(";base64"):
                data = base64.b64decode(payload, validate=False)
            else:
                data = urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"the data: URL {shown!r} is not valid base64: {exc}") from None
        source: Any = io.BytesIO(data)
    elif url.startswith(("http://", "https://")):
        raise ValueError(
            f"image URL {shown!r} is remote; local-vision never downloads, so pass the image inline as a "
            "data:image/...;base64 URL or as a local file path"
        )
    else:
        if url.startswith("file://"):
            path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        else:
            path = Path(url).expanduser()
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        source = path
    try:
        with PILImage.open(source) as opened:
            opened.load()
            return to_rgb(opened) if opened.mode != "RGB" else opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read the image {shown!r}: {type(exc).__name__}: {exc}") from None


def image_from_messages(messages: Sequence[dict[str, Any]]) -> tuple[Image | None, str, str | None]:
    """Split OpenAI chat messages into (first image, user text, system text or None).

    The image is the first ``image_url`` part of any message, decoded to an RGB PIL image; the user text
    joins the text parts of all user messages with newlines; the system text joins system (and
    ``developer``) messages, or is None when there are none.  Assistant turns are ignored.  Raises
    ValueError for an image that cannot be read or a content part that is neither text nor image.
    """
    image: Image | None = None
    user: list[str] = []
    system: list[str] = []
    for message in messages:
        role = str(message.get("role", "user"))
        target = system if role in ("system", "developer") else user if role == "user" else None
        content = message.get("content")
        parts: Sequence[Any] = [content] if content is None or isinstance(content, str) else content
        for part in parts:
            if part is None:
                continue
            if isinstance(part, str):
                text: str | None = part
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                text = str(part.get("text") or "")
            elif isinstance(part, dict) and part.get("type") == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if not isinstance(url, str) or not url.strip():
                    raise ValueError("an image_url content part has no url")
                if image is None:
                    image = _open_image(url)
                else:
                    log.warning("%s answers about one image; ignoring further images in the request", PROVIDER)
                continue
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{PROVIDER} accepts text and image_url content parts, got a {kind!r} part")
            if target is not None and text:
                target.append(text)
    return image, "\n".join(user), ("\n".join(system) if system else None)
