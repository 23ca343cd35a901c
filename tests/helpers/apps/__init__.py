"""Small standard-library HTTP applications that tests run as real services (in a thread or as a process)."""
