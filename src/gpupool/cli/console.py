"""`gpupool console`: print (and optionally open) a one-time link that signs a browser in to the web console."""

from __future__ import annotations

from typing import Annotated

import typer

from gpupool.cli.common import handle_errors, make_light_client
from gpupool.client.light import API


@handle_errors
def console_link(open_browser: Annotated[bool, typer.Option("--open", help="Also open it in the default browser.")]
                 = False) -> None:
    """Print a one-time link to the web console that signs the browser opening it in as you (valid once, for
    five minutes); or sign in on the console's page by pasting an API token."""
    with make_light_client() as client:
        link = client.send("POST", f"{API}/console/links")
        url = client.url.rstrip("/") + link["path"]
    typer.echo(url)
    typer.echo(f"(valid once, for {link['expires_in_s'] / 60:g} minutes)", err=True)
    if open_browser:
        import webbrowser  # noqa: PLC0415  (only when asked)

        webbrowser.open(url)


def register(app: typer.Typer) -> None:
    """Add `console` to the root app."""
    app.command("console")(console_link)
