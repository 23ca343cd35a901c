"""Response caches (exact, semantic with its guard) and the embedding models they use."""
