"""The `farm` command's click group: did-you-mean on mistyped commands, one-line errors, and the
subcommands that services add as argparse parsers (the ``farm.commands`` entry points).

A mistake the user made (a :class:`~farmkit.errors.FarmError`, a usage error) is printed as one line,
``error: ...``, on stderr; ``--debug`` (or ``FARM_DEBUG=1``) prints the traceback too.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback

import click

from farmkit.errors import FarmError

DEBUG_VARIABLE = "FARM_DEBUG"


def debug_requested(environ=None) -> bool:
    """True when FARM_DEBUG asks for tracebacks (1, true, yes, on)."""
    environ = os.environ if environ is None else environ
    return environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def closest(word: str, choices) -> str | None:
    """The choice ``word`` most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def print_error(message: str) -> None:
    """One line on stderr: ``error: MESSAGE`` (newlines inside the message folded)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)


class FarmGroup(click.Group):
    """A group that suggests the command a typo meant and turns FarmError into one line and exit 1."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            match = closest(name, self.list_commands(ctx))
            if match:
                ctx.fail(f"No such command {name!r}. Did you mean {match!r}?")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FarmError, KeyError) as exc:
            if ctx.params.get("debug") or debug_requested():
                traceback.print_exc()
            print_error(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
            raise click.exceptions.Exit(1) from None


class _BridgedParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are click usage errors (one line), with did-you-mean on options."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            words = message.removeprefix("unrecognized arguments: ").split()
            option = next((w.split("=")[0] for w in words if w.startswith("-")), None)
            match = option and closest(option, [o for o in self._option_string_actions if o.startswith("--")])
            if match:
                message = f"No such option {option!r}. Did you mean {match!r}?"
        raise click.UsageError(f"{message} (see {self.prog} --help)")


class ArgparseCommand(click.Command):
    """A subcommand a service registered as an argparse parser (``register(subparsers)``): click hands
    it the raw arguments and the parser does the rest, ``--help`` included."""

    def __init__(self, name: str, parser: argparse.ArgumentParser, short_help: str | None):
        super().__init__(name, help=parser.description, short_help=short_help, add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "allow_interspersed_args": False})
        self.parser = parser

    def invoke(self, ctx: click.Context):
        try:
            args = self.parser.parse_args(ctx.args)
        except SystemExit as exc:      # argparse's --help
            raise click.exceptions.Exit(exc.code or 0) from None
        args.command = self.name
        return args.handler(args)


def argparse_commands(*registers) -> list[ArgparseCommand]:
    """The commands that ``register(subparsers)`` functions add, as click commands."""
    root = _BridgedParser(prog="farm")
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    for register in registers:
        register(sub)
    helps = {action.dest: action.help for action in sub._choices_actions}
    return [ArgparseCommand(name, parser, helps.get(name)) for name, parser in sub.choices.items()]
