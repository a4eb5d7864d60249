"""Check that a command line given to the image (`cnop ...`) is one the `cnop` CLI accepts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from typer.main import get_command

from cnop.cli import app


def check_cnop_command(args: Sequence[str]) -> str:
    """Parse `cnop ARGS` as the CLI would, without running it; return the command's path.

    Raises AssertionError naming the problem: an unknown command, an unknown option, a missing or
    badly typed value.
    """
    # Typer carries its own copy of click, so commands are recognised by shape, not by class.
    command: Any = get_command(app)
    path = ["cnop"]
    rest = list(args)
    while hasattr(command, "commands"):
        # A group's own options (`cnop serve --port ...`) come before its subcommand.
        options = [a for a in rest if a.startswith("-")]
        names = [a for a in rest if not a.startswith("-")]
        if not names or names[0] not in command.commands:
            if command.invoke_without_command and not names:
                break
            raise AssertionError(f"`{' '.join(path)}` has no command {names[:1]} (from {list(args)})")
        if options and rest.index(names[0]) > 0:
            raise AssertionError(f"options before the subcommand in {list(args)}")
        sub = command.commands[names[0]]
        path.append(names[0])
        rest = rest[rest.index(names[0]) + 1 :]
        command = sub
    try:
        with command.make_context(" ".join(path), list(rest), resilient_parsing=False):
            pass
    except Exception as exc:
        if type(exc).__name__ == "Exit":
            return " ".join(path)
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        raise AssertionError(f"`{' '.join(path)} {' '.join(rest)}`: {message}") from exc
    return " ".join(path)
