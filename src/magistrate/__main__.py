"""`python -m magistrate` runs the CLI."""

from magistrate.cli import main

main()
