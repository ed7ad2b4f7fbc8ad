"""Budgets: the budget gate, budgets and their windows, spend reports."""
