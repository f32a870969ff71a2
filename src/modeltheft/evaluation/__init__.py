"""Metrics and result records."""
