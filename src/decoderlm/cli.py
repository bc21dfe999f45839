"""`decoderlm <command>`: every module in `decoderlm.commands` adds one sub-command.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=<plain function taking the parsed args>`. Adding a command means adding one file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

# Before anything imports torch (libgomp reads it once, at load): OpenMP threads that wait sleep
# instead of spinning, so on a busy machine they leave their core to whoever can use it
# (docs/training.md, "Threads"). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from decoderlm import __version__, commands  # noqa: E402
from decoderlm.errors import DecoderLMError  # noqa: E402


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2 (argparse's own convention)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="decoderlm", description="Build, train and run decoder-only language models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def _version() -> str:
    import platform

    import torch

    return f"decoderlm {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from decoderlm.commands.generate import one_line_warnings

    try:
        with one_line_warnings():  # a library warning is one 'decoderlm: warning:' line, as errors are
            result = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at exit
    except DecoderLMError as err:
        print(f"decoderlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decoderlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return int(result or 0)


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`decoderlm info gpt | head -1`): end quietly, as a tool killed
    by SIGPIPE would. Python would flush stdout again at exit and complain, so point it at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what the shell reports for such a tool


if __name__ == "__main__":
    sys.exit(main())
