"""Options and the Settings resolved from them once per run."""
