"""``python -m rccsnn`` runs the command-line interface."""
from rccsnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
