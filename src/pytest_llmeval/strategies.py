"""The public home of the robustness strategies and ``llm_settings``::

    from pytest_llmeval.strategies import llm_settings, perturbed

The implementation lives in :mod:`pytest_llmeval.robustness.strategies`; nothing inside the package imports
this module, so it sits above every layer.
"""

from __future__ import annotations

from pytest_llmeval.robustness.strategies import *  # noqa: F403 - this module is the public name of that one
from pytest_llmeval.robustness.strategies import __all__ as __all__
