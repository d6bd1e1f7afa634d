"""`python -m imagesvc`: the same as the `imagesvc` command."""

from imagesvc.cli import run

if __name__ == "__main__":
    run()
