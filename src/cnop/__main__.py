"""`python -m cnop ...`: the same as the `cnop` command."""

from cnop.cli import main

main()
