"""Reporters: terminal summary, GitHub step summary, HTML report."""
