"""Benchmarks, the demo and generators; a package so they run as modules from the repository
root (`python -m tools.bench_goodput`) and import `tests.support` (CPython only)."""
