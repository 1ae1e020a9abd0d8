"""``python -m mriscan`` runs the CLI."""

from mriscan.cli import entry

if __name__ == "__main__":
    entry()
