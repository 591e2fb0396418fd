"""Benchmarks; each entry point returns a JSON-serialisable dict that the CLI prints."""
