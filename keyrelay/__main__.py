"""``python -m keyrelay`` runs the command-line interface."""

from keyrelay.cli import main

main()
