"""Local tooling: code generation, the process runner behind `make run`, and the
process launchers the end-to-end tests and benchmarks share."""
