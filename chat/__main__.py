"""``python -m chat``: parse the command line into Settings and run the server."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from chat.exceptions import ConfigError
from chat.server import run
from chat.settings import COMMAND_LINE_STORE, Settings

_TYPES = {"int": int, "float": float, "str": str}


def parser() -> argparse.ArgumentParser:
    """One option per setting; an option not given falls back to its CHAT_* variable, then the default."""
    parser = argparse.ArgumentParser(prog="chat", description="Run the chat server.")
    for field in fields(Settings):
        option = "--" + field.name.replace("_", "-")
        default = COMMAND_LINE_STORE + " on memory://" if field.name == "store" else field.default
        help_text = f"(CHAT_{field.name.upper()}, default {default})"
        if field.type == "bool":
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(option, type=_TYPES[str(field.type)], default=None, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run until stopped; a bad setting prints one line and exits with status 2."""
    arguments = vars(parser().parse_args(argv))
    try:
        settings = Settings.from_env(**arguments)
        if not settings.store and settings.backend.startswith("memory:"):
            settings = settings.replace(store=COMMAND_LINE_STORE)  # the command-line server remembers
        run(settings)
    except ConfigError as exc:
        print(f"chat: {exc.detail}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
