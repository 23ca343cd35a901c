"""Isolated execution of generated code (bubblewrap, uid drop, seccomp, limits)."""
