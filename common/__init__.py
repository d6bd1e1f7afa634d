"""Plumbing shared by the three services: env parsing, JSON logs, ids, errors, gRPC wiring."""
