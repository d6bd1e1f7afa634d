"""Runs the whole system on one machine: `python -m launcher [--reload]`."""
