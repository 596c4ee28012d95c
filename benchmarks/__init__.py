"""Benchmarks for skdcd (not run by CI)."""
