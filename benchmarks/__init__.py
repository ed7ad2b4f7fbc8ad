"""Runnable benchmarks that print tables of ratios."""

from __future__ import annotations

import importlib.util
import sys


def plot_path(plot: str) -> str:
    """`--plot`'s path, or '' (no plot) when matplotlib, an optional extra, is missing: said
    up front, and the run's tables still print (it failed with a traceback after them)."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        print(f"no plot ({plot}): matplotlib is not installed (pip install -e '.[bench]')",
              file=sys.stderr)
        return ""
    return plot
