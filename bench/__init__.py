"""Benchmarks: run with `make bench`; what they measure and the bar: bench/README.md."""
