"""`gpupool port-forward ID PORT`: a local TCP port that reaches a port a workload listens on, through the
server (one WebSocket to `/workloads/<id>/tunnel/<port>` per local connection, with this client's token).

The check that the workload is there goes through the light client (standard library); the tunnels need
WebSockets, which the standard library does not speak: `websockets` is imported when the first local
connection opens, and asyncio when the forwarding starts, not before."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from gpupool.cli.common import console, handle_errors, make_light_client

if TYPE_CHECKING:
    import asyncio

CHUNK = 64 * 1024  # bytes read from the local connection per message: a socket buffer's worth


def _ws_url(server_url: str, workload_id: int, port: int) -> str:
    scheme, _, rest = server_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/workloads/{workload_id}/tunnel/{port}"


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str, token: str) -> None:
    import asyncio  # noqa: PLC0415  (already loaded by _forward)

    from websockets.asyncio.client import connect  # noqa: PLC0415  (lazy: start-up time)
    from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: PLC0415

    try:
        upstream = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None,
                                 compression=None)
    except (OSError, InvalidHandshake) as exc:
        console.print(f"[red]connection refused by the server:[/red] {exc}", soft_wrap=True)
        writer.close()
        return

    async def down() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                writer.write(message.encode() if isinstance(message, str) else message)
                await writer.drain()

    async def up() -> None:
        while chunk := await reader.read(CHUNK):
            await upstream.send(chunk)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()
        writer.close()


async def _forward(url: str, token: str, address: str, local_port: int, what: str) -> None:
    import asyncio  # noqa: PLC0415  (already loaded by port_forward)

    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, url, token), address, local_port)
    bound = server.sockets[0].getsockname()
    console.print(f"forwarding {bound[0]}:{bound[1]} -> {what}; Ctrl-C to stop", soft_wrap=True)
    async with server:
        await server.serve_forever()


@handle_errors
def port_forward(workload_id: Annotated[int, typer.Argument(help="The workload's id.", min=1)],
                 port: Annotated[int, typer.Argument(help="The port as its spec names it (ports: [...]).",
                                                     min=1, max=65535)],
                 local_port: Annotated[int, typer.Option(help="The local port (0: any free one).", min=0,
                                                         max=65535)] = 0,
                 address: Annotated[str, typer.Option(help="The local address to listen on.")] = "127.0.0.1") -> None:
    """Open a local port that reaches PORT of workload ID (replica 0) through the server, for tools that need
    a plain port (a debugger, a database client); HTTP apps can also use /workloads/ID/ports/PORT/."""
    with make_light_client() as client:
        client.get_workload(workload_id)  # fails early (not found, no token) with the usual message
        url, token = _ws_url(client.url, workload_id, port), client.token or ""
    import asyncio  # noqa: PLC0415  (lazy: only once the workload is known)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forward(url, token, address, local_port, f"workload {workload_id} port {port}"))


def register(app: typer.Typer) -> None:
    """Add `port-forward` to the root app."""
    app.command("port-forward")(port_forward)
