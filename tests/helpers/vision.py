"""Shapes drawn with Pillow for the vision tests (tests/unit/test_vision.py, tests/sessions/test_vision_sessions.py)."""

from __future__ import annotations

from PIL import Image, ImageDraw


def circle(fill: str = "red", size: tuple[int, int] = (200, 200), box: tuple[int, ...] = (50, 50, 150, 150)
           ) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse(box, fill=fill)
    return image


def square(fill: str = "blue") -> Image.Image:
    image = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(image).rectangle((50, 50, 150, 150), fill=fill)
    return image
