"""``python -m dyt_edge`` runs the CLI."""

from .cli import run

run()
