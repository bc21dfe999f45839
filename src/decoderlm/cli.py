"""`decoderlm <command>`: every module in `decoderlm.commands` adds one sub-command.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=<plain function taking the parsed args>`. Adding a command means adding one file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from decoderlm import commands
from decoderlm.errors import DecoderLMError


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2 (argparse's own convention)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="decoderlm", description="Build, train and run decoder-only language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except DecoderLMError as err:
        print(f"decoderlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decoderlm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
