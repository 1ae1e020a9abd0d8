"""``python -m mriscan`` runs the CLI."""

from mriscan.cli import main

if __name__ == "__main__":
    main()
