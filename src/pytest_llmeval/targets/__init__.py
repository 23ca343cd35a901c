"""Targets: what answers a suite's cases -- the ``--llm`` model, or the team's application (docs/targets.md)."""
