"""Aggregation of run results into tables, plots and a report."""
