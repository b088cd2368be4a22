"""The Typer application and the error handling every command shares."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="dacdr",
    help="Cross-domain recommendation to cold-start users with domain-aware cross-attention.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def command_threads(threads: int | None) -> None:
    """Set torch's threads for a training command (`--threads`, else the free share of the cores) and say so."""
    from dacdr.training.threads import set_command_threads

    n, why = set_command_threads(threads)
    err_console.print(f"torch threads: {n} ({why}; --threads to choose)", highlight=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's input errors into one red line and exit code 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # ConfigError, DatasetError and CheckpointError are ValueErrors.
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err_console.print(f"[bold red]error:[/bold red] {msg}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper
