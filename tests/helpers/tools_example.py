"""Example tool functions for tests/unit/test_tools.py: typed signatures, Google and reST docstrings, a tool that
raises, one that returns something JSON cannot hold, an async one, one taking a pydantic model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b (int): The second number,
            which may be negative.

    Returns:
        The sum.
    """
    return a + b


def divide(a: float, b: float = 1.0) -> float:
    """Divide a by b.

    :param a: the dividend
    :param float b: the divisor,
        not zero
    :returns: the quotient
    """
    return a / b


def search_docs(query: str, limit: int = 3, tags: list[str] | None = None, exact: bool = False) -> list[str]:
    """Search the product documentation
    for a query.

    Longer explanation that is not part of the summary.

    Args:
        query: What to look for.
        limit: How many titles at most.
        tags: Only documents with one of these tags.
    """
    titles = ["Reset your password", "Export data as CSV", "Book a meeting room"]
    hits = [t for t in titles if (query == t if exact else query.lower() in t.lower())]
    return hits[:limit]


def book_meeting(room: str, kind: Literal["call", "visit"] = "call", confirm: bool = False) -> dict[str, object]:
    """Book a meeting room."""
    if not confirm:
        raise PermissionError("booking needs confirm=true")
    return {"booked": True, "room": room, "kind": kind}


class Point(BaseModel):
    x: int
    y: int


def norm(point: Point) -> int:
    """The Manhattan norm of a point."""
    return abs(point.x) + abs(point.y)  # an attribute: the JSON object became a Point


def opaque(label):  # type: ignore[no-untyped-def]  # unannotated on purpose: any JSON value
    return object()


async def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


def takes_everything(topic: str, *args: str, **kwargs: str) -> dict[str, str]:
    """Echo the keyword arguments."""
    return {"topic": topic, **kwargs}


def positional(x: int, /) -> int:
    return x


if False:  # typing.TYPE_CHECKING spelled so that the name is never imported: get_type_hints fails on it
    from decimal import Decimal


def half_typed(count: int, amount: Decimal) -> str:  # noqa: F821
    """One hint resolves, one cannot."""
    return f"{count} {amount}"
