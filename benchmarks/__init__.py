"""Runnable benchmarks that print tables of ratios."""
