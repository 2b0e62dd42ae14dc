"""The stall proxy relays bytes, stops every byte during a stall, and carries on afterwards."""

from __future__ import annotations

import asyncio

from simulator.proxy import StallProxy


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def _scenario() -> None:
    server, port = await _echo_server()
    proxy = StallProxy("127.0.0.1", port)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.read(4), 5) == b"ping"

    proxy.stall()
    assert proxy.stalled
    writer.write(b"during")
    try:
        got = await asyncio.wait_for(reader.read(6), 0.5)
    except TimeoutError:
        got = b""
    assert got == b""  # nothing crosses a stall
    proxy.resume()
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"during"  # then it flows

    writer.close()
    await proxy.stop()
    server.close()
    await server.wait_closed()
    assert proxy.stalls == 1


def test_stall_and_resume() -> None:
    asyncio.run(_scenario())
