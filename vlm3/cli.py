"""The ``vlm3`` command line. Each command lives next to the code it drives; this file only wires them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vlm3",
    help="Vision language models as native 3D learners: data, training, inference and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Vision language models as native 3D learners."""


@app.command()
def version() -> None:
    """Print the vlm3 version."""
    from vlm3 import __version__

    typer.echo(__version__)


# --- commands (one block each; keep blocks independent) -------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
