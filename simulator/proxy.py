"""A TCP relay that can stall or cut the connections going through it.

Devices of a group that a ``network_stall`` fault targets connect to the
broker through one :class:`StallProxy`. While it is stalled it moves no bytes
in either direction and accepts new connections without forwarding anything,
as a dead radio link would: keep-alives go unanswered, the broker eventually
drops the client and publishes its last will, and the device's own keep-alive
timer gives up. When the stall ends, whatever survived carries on.

It relays bytes only; it never parses MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

_CHUNK = 65_536


class StallProxy:
    """Relays ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host, self.target_port = target_host, target_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.stalls = 0

    async def start(self) -> None:
        """Listen on a free loopback port (:attr:`port`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every relayed connection."""
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def stall(self) -> None:
        """Stop moving bytes (connections stay open)."""
        self.stalls += 1
        self._flowing.clear()

    def resume(self) -> None:
        """Move bytes again."""
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        """Whether the relay is stalled now."""
        return not self._flowing.is_set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as exc:
            log.debug("proxy: upstream unreachable: %s", exc)
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                await self._flowing.wait()  # nothing passes a stall, not even a FIN
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            # One side ended: end the other, as the network would.
            writer.close()
