"""Benchmarks (SPEC.md §7): run with `make bench`; see bench/README.md."""
