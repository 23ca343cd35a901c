"""The built-in checks, one module per family, registered through ``pytest_llmeval_register_checks``."""
