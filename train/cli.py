"""``nphm-train``: data generation and every training loop, as subcommands."""

from __future__ import annotations

import click

from tracker import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nphm-train")
def main() -> None:
    """Build the synthetic head world from ICT-FaceKit and train the project's models."""


if __name__ == "__main__":  # pragma: no cover
    main()
