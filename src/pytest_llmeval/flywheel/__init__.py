"""Growing suites: generate, review, import benchmarks."""
