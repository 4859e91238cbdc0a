"""`asft` command line: a thin layer that parses arguments and calls the library.

Each sub-command lives in its own module (``asft.cli.<name>``) exposing ``register(subparsers)``;
heavy imports (torch, transformers) happen inside the command functions so ``asft --help`` is instant.
Lists of names (methods, judges, suites, templates) come from the registries, which are light to
import; ``--plugin MODULE`` (any command, repeatable) is imported before the parser is built, so the
methods, judges and suites it registers are choices like the built-in ones.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from asft.errors import AsftError

BUILTIN_PLUGINS = ("asft.toy",)  # registers the toy-* suites and the toy judge (no torch at import)

# Sub-command modules, in the order they appear in `asft --help`.
COMMANDS = ["import_gguf", "export_gguf", "align", "anchor", "train", "merge", "safelora", "data", "eval", "experiment", "report",
            "landscape", "toy", "demo"]


class Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error: ``asft train: error: ... (see asft train --help)``.
    Sub-command parsers are made of the same class (argparse's default ``parser_class``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: int):
    """An argparse type: an integer >= ``low`` (``--workers 0`` is refused here, not deep in a run)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def console():
    """The commands' rich console. Off a terminal (a pipe, a file, CI logs) it does not wrap: rich would
    hard-wrap tables and lines at 80 columns, breaking a markdown table row into two."""
    import os

    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(soft_wrap=not tty, width=None if tty or os.environ.get("COLUMNS") else 100_000)


def print_markdown(text: str) -> None:
    """A report's markdown as written (no rich markup: ``[0.1, 1]`` or ``**`` stay as they are)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps an ``example:`` epilog's lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="asft",
        description="Safety-preserving LoRA fine-tuning of aligned LLMs (AsFT).",
    )
    from asft import __version__

    parser.add_argument("--version", action="version", version=f"asft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"asft.cli.{name}").register(sub)
    for command in _leaf_parsers(sub):  # one thread policy for every command (asft.runtime)
        command.formatter_class = HelpFormatter
        command.add_argument("--threads", type=at_least(1), metavar="N",
                             help="CPU threads for torch (default: $ASFT_THREADS, else half the usable "
                                  "cores; results do not depend on it, speed does)")
        command.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                             help="import MODULE first: the methods, judges and suites it registers can be "
                                  "chosen like the built-in ones (repeatable)")
    return parser


def _leaf_parsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """The parsers that run something: each command's, or its actions' (``asft toy build``, ``asft data mix``)."""
    leaves = []
    for command in sub.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        leaves += [p for a in nested for p in _leaf_parsers(a)] if nested else [command]
    return leaves


def load_plugins(argv: list[str]) -> None:
    """Import the built-in plugins and every ``--plugin MODULE`` of ``argv`` (before the parser is built)."""
    from asft.methods import load_plugins as load

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--p 0.1` is not --plugin
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    load([*BUILTIN_PLUGINS, *known.plugin])


def _notes(command: str) -> None:
    """The library's notes (``logging.getLogger("asft")``: a run continued or started afresh, ...)
    as one line each on stderr, named like the errors."""
    import logging

    logger = logging.getLogger("asft")
    if not any(getattr(h, "asft_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.asft_cli = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for h in logger.handlers:
        if getattr(h, "asft_cli", False):
            h.setFormatter(logging.Formatter(f"asft {command}: %(message)s"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins(argv)
    except AsftError as e:
        print(f"asft: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE items may come after options (argparse takes a positional list only in one piece)
    dest = getattr(args, "assignments_dest", None)
    if dest and all("=" in e and not e.startswith("-") for e in extra):
        getattr(args, dest).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _notes(args.command)
    try:
        from asft.runtime import apply_threads

        apply_threads(args.threads)
        rc = args.func(args)
    except AsftError as e:
        print(f"asft {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def entry() -> None:
    """The ``asft`` program: ``main()``, then the end of the process. A rank of a torchrun /
    accelerate launch whose command ended well waits for the others, destroys its process group and
    leaves without the interpreter's finalisation: there gloo's threads met torn-down objects now
    and then and aborted a finished, saved run (SIGABRT, "terminate called without an active
    exception", about one FSDP test launch in ten in full CI runs). After an error the group is left
    as it is (a barrier with a dead peer would hang)."""
    from asft.runtime import close_process_group

    rc = main()
    if rc == 0 and close_process_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
