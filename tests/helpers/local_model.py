"""Comparisons shared by tests/unit/test_local_model.py and tests/realmodel/test_local_model_realmodel.py."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmeval.providers.local import LocalModelCacheWarning


def same_weights(a: Any, b: Any) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def cache_warnings(recwarn: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in recwarn if issubclass(w.category, LocalModelCacheWarning)]
