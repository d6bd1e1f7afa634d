"""Runs the whole system on one machine: `python -m launcher [--reload] [--cache N]
[--processor N] [--gateway N]`."""
