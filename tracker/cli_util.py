"""Small helpers shared by the command-line tools: one-line errors and a default subcommand."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import click

from model.errors import InputError, MissingDependencyError


def one_line_errors(prog: str) -> Callable:
    """Decorate a click command so that user errors print as one line and exit with status 2.

    Known user-facing errors (:class:`InputError`, missing files, unwritable paths, missing optional
    dependencies) print ``<prog>: error: <message>``; anything else is a bug and keeps its traceback.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (InputError, MissingDependencyError, FileNotFoundError, PermissionError,
                    IsADirectoryError, NotADirectoryError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                click.echo(f"{prog}: error: {msg}", err=True)
                sys.exit(2)

        return wrapper

    return decorate


class DefaultCommandGroup(click.Group):
    """A click group that runs ``default_command`` when the first argument is not a subcommand.

    So ``nphm-track video.mp4 --out anim.usd`` means ``nphm-track track video.mp4 --out anim.usd``
    while ``nphm-track export ...`` still reaches the ``export`` subcommand.
    """

    def __init__(self, *args, default_command: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.default_command and args and args[0] not in self.commands and not args[0].startswith("-"):
            if self.default_command not in self.commands:
                raise click.UsageError(
                    f"{args[0]!r} is not a command, and '{ctx.info_name} {self.default_command}' (the default "
                    f"for a file argument) is not available in this version; commands: "
                    f"{', '.join(sorted(self.commands))}", ctx)
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
