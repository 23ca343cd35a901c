"""Helpers shared by the tests and bench/: a scripted OpenAI-compatible server (:mod:`helpers.llm_server`) and a
tiny random-weight vision-language model (:mod:`helpers.tiny_vlm`). Imported as ``helpers`` (tests/ is on sys.path)."""
