"""`python -m lfqtok` runs the CLI."""

from .cli import main

main()
