"""The `pocovid` command. Each subcommand only parses arguments and calls the package API."""

from __future__ import annotations

import sys

import typer

from pocovid import __version__
from pocovid.errors import PocovidError

app = typer.Typer(help="pocovid: decision support for lung point-of-care ultrasound (research use, "
                       "not a diagnosis).", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
data_app = typer.Typer(help="Index a dataset, split it by patient, check a split.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command("info")
def info_cmd(files: list[str] = typer.Argument(..., help="Recordings (video, image, DICOM).")):
    """Print fps, frame count and size of each recording."""
    from pocovid.media import probe

    failed = 0
    for f in files:
        try:
            i = probe(f)
            fps = f"{i.fps:.2f}" if i.fps else "-"
            typer.echo(f"{f}\t{i.kind}\t{i.format}\t{i.width}x{i.height}\t{i.n_frames} frames\t{fps} fps")
        except PocovidError as e:
            typer.echo(f"error: {e}", err=True)
            failed += 1
    if failed:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except PocovidError as e:  # one line, no traceback
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
