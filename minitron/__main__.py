"""``python -m minitron`` runs the CLI."""

from minitron.cli import run

run()
