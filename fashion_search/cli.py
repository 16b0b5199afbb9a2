"""The `fashion-search` command. Each group of commands lives in fashion_search/commands/."""

from __future__ import annotations

import typer

from fashion_search.commands import (
    api_commands,
    catalog_commands,
    encoder_commands,
    eval_commands,
    store_commands,
    ui_commands,
)

app = typer.Typer(
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
