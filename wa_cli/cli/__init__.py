"""The Typer command line. The only part of wa that imports typer or rich."""
