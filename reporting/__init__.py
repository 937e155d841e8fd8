"""Reporting: reading run directories, grouping runs, statistics over seeds, and the figures and tables
that ``scripts/`` (thin command-line interfaces) write."""
