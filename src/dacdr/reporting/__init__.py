"""Turning run results into metrics.json, markdown tables and plots."""
