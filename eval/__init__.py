"""Evaluation entry points (evaluate.py, benchmarks) and the closed-loop wiring they share."""
