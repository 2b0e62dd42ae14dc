"""Benchmarks: the project against a bare baseline in the same run (``bench/run``)."""
