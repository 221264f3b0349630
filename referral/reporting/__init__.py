"""Reporting: statistics, suppression, transparency reports, CSV, and the dashboard (DESIGN.md §8)."""
