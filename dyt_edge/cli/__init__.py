"""The ``dyt-edge`` command line: a thin layer over the library, one module per command.

Errors are mapped to exit codes in one place (:func:`main`): a :class:`~dyt_edge.errors.
DytEdgeError` becomes ``error: <problem> (<fix>)`` on stderr and its exit code; usage errors
exit 2 (Click's convention); anything unexpected is reported in one line too, and ``--debug``
(or ``DYT_EDGE_DEBUG=1``) shows the traceback instead. Heavy imports (torch, timm) happen inside
command bodies so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import click
import typer

# Newer Typer vendors Click: its exception classes are not click's own, so catch both.
_EXIT: tuple = (click.exceptions.Exit, getattr(typer, "Exit", click.exceptions.Exit))
_ABORT: tuple = (click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort))
try:
    from typer._click.exceptions import ClickException as _TyperClickException
    _CLICK_ERRORS: tuple = (click.ClickException, _TyperClickException)
except ImportError:  # pragma: no cover - Typer versions that use click directly
    _CLICK_ERRORS = (click.ClickException,)

from .._version import __version__
from ..errors import DytEdgeError

app = typer.Typer(
    name="dyt-edge",
    help="Turn trained DyT checkpoints into fast, verified deployment artifacts.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": os.environ.get("DYT_EDGE_DEBUG", "") not in ("", "0")}


def debug_enabled() -> bool:
    return _state["debug"]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dyt-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version_callback, is_eager=True, help="Print the version.")] = None,
) -> None:
    """Turn trained DyT checkpoints into fast, verified deployment artifacts."""
    if debug:
        _state["debug"] = True


def _register() -> None:
    from . import bench as bench_cmd
    from . import checks as checks_cmd
    from . import build as build_cmd
    from . import demo as demo_cmd
    from . import export as export_cmd
    from . import inspect as inspect_cmd
    from . import package as package_cmd
    from . import serve as serve_cmd
    from . import train as train_cmd
    from . import validate as validate_cmd
    from . import visualize as visualize_cmd

    app.command("demo")(demo_cmd.demo)
    app.command("train")(train_cmd.train)
    app.command("inspect")(inspect_cmd.inspect)
    app.command("export")(export_cmd.export)
    app.command("build")(build_cmd.build)
    app.command("validate")(validate_cmd.validate)
    app.command("bench")(bench_cmd.bench)
    app.command("visualize")(visualize_cmd.visualize)
    app.command("checks")(checks_cmd.checks)
    app.command("package")(package_cmd.package)
    app.command("serve")(serve_cmd.serve)


_register()


def _fail(message: str, code: int) -> int:
    typer.secho(f"error: {message}", err=True, fg="red")
    return code


def main(argv: Optional[list[str]] = None) -> int:
    """Console-script entry point; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        _state["debug"] = True
    try:
        app(args=args, prog_name="dyt-edge", standalone_mode=False)
        return 0
    except _EXIT as exc:
        return exc.exit_code
    except SystemExit as exc:  # shell completion (--show-completion, _DYT_EDGE_COMPLETE) exits
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return _fail(str(exc.code), 1)
    except _ABORT:
        return _fail("aborted", 130)
    except _CLICK_ERRORS as exc:
        exc.show()
        return exc.exit_code
    except DytEdgeError as exc:
        if debug_enabled():
            raise
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a line
        if debug_enabled():
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(f"unexpected {type(exc).__name__}: {detail} "
                     "(re-run with --debug for the traceback, and report it)", 1)


def run() -> None:  # pragma: no cover - exercised through the console script
    sys.exit(main())
