"""What answers a case: the model runner (litellm), the offline local providers, resilience, prefetch."""
