"""The installed version of pytest-llmeval (recorded in results.json)."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-llmeval")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
