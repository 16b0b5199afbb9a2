"""The `fashion-search` command. Each group of commands lives in fashion_search/commands/."""

from __future__ import annotations

from typing import Any

import typer
from typer._click.core import Context
from typer.core import TyperGroup

from fashion_search.commands import (
    api_commands,
    catalog_commands,
    encoder_commands,
    eval_commands,
    store_commands,
    ui_commands,
)
from fashion_search.settings import InvalidSettings, load_settings

HELP_OPTIONS = frozenset({"--help", "-h"})


class SettingsCheckedGroup(TyperGroup):
    """Refuses to run a command on settings that cannot be read, in one line per setting
    (not a traceback from deep inside the first command that reads them). Help always
    works."""

    def invoke(self, ctx: Context) -> Any:
        if not ctx.resilient_parsing and not HELP_OPTIONS & set(ctx.args):
            try:
                load_settings()
            except InvalidSettings as exc:
                typer.echo(f"Error: {exc}", err=True)
                raise typer.Exit(2) from None
        return super().invoke(ctx)


app = typer.Typer(
    cls=SettingsCheckedGroup,
    name="fashion-search",
    help="Visual search for fashion catalogs: ingest a catalog, search it, serve the API and UI.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


for module in (
    catalog_commands,
    encoder_commands,
    eval_commands,
    api_commands,
    ui_commands,
    store_commands,
):
    module.register(app)


if __name__ == "__main__":
    app()
