"""Coverage-guided fuzzing with atheris (`make fuzz`, not in CI): see docs/testing.md."""
