"""The Orbit docs bot, an example application under test (see README.md)."""
