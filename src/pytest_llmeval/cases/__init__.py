"""Case files: the schema, the loader (with YAML line lookup), holdout splits and the one writer."""
