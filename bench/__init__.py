"""Benchmarks of fraudops (run as scripts, e.g. ``python bench/bench_training.py``; results go to bench/results/)."""
