"""Retrieval: chunking documents, indexing them into lancedb, searching."""
