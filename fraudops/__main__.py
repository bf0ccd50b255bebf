"""``python -m fraudops``: the command line (used to start child processes with this interpreter)."""

from fraudops.cli import main

main()
