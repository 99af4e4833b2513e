"""``nphm-track``: the command-line entry point.

Subcommands are registered here; each is thin: it parses options, builds a config and calls one library
function that is also importable from Python.
"""

from __future__ import annotations

import click

from tracker import __version__
from tracker.cli_util import DefaultCommandGroup


@click.group(cls=DefaultCommandGroup, default_command="track",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nphm-track")
def main() -> None:
    """Turn a face video into an animated 3D head (Neural Parametric Head Model).

    \b
    Subcommands:
      export   convert an animation or track file to another format (.usd, .abc, .pc2, ...)
    """


if __name__ == "__main__":  # pragma: no cover
    main()
