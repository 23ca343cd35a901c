"""The pytest side of a run: collectors and items, the run state, the session plugin."""
