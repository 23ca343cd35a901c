"""Hypothesis-driven robustness: strategies, settings, the robustness runner."""
