"""The simulated devices of the manifest fan-out benchmark (not a benchmark itself).

N devices are played by a few processes (default 2), each holding a few MQTT
connections (default 2) logged in as the bench's simulator user, each
subscribed to its share of the explicit ``d/{id}/down/manifest`` topics. In
``device`` mode every manifest is verified with the real trust core
(``device_agent.trust.accept_manifest``, one ``TrustedState`` per device, kept
across rounds so the sequence keeps rising) and answered with a real
``ManifestAck`` on ``d/{id}/up/manifest_ack`` at QoS 1; in ``count`` mode
(the baseline) messages are only counted.

The connections speak MQTT 3.1.1 through :class:`LiteMqtt`, a minimal client
(CONNECT, SUBSCRIBE, PUBLISH QoS 0/1 both ways, PUBACK, PINGREQ) that reads
whatever the socket holds, parses every complete packet and writes its
PUBACKs and acks with one ``send`` per read. The devices stand in for 10,000
machines with a CPU each; with paho (a network thread per connection, three
``recv`` calls and a lock-protected message object per packet) their MQTT
handling alone took about 130 µs of Python per device on this 2-core machine,
which measured the simulator rather than the hub. The hub side keeps paho.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import struct
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from protocols import topics
from protocols.messages import ManifestAck, ManifestDelivery, TrustAnchor, decode_message

SUBSCRIBE_CHUNK = 200
KEEPALIVE = 60
_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _PINGRESP = 2, 3, 4, 9, 13
_U16 = struct.Struct(">H")


class MqttError(RuntimeError):
    """The broker refused or broke the simulated devices' connection."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


class LiteMqtt:
    """One blocking-connect, non-blocking-read MQTT 3.1.1 connection.

    Incoming QoS 1 publishes are acknowledged in the same write as whatever
    the caller queued while handling them (:meth:`flush`).
    """

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str):
        self.sock = socket.create_connection((host, port), timeout=15)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._next_id = 0
        self.subacks: set[int] = set()
        self.pubacks = 0
        self.last_write = time.monotonic()
        flags = 0x80 | 0x40 | 0x02  # username, password, clean session
        body = (
            _string("MQTT")
            + bytes([4, flags])
            + _U16.pack(KEEPALIVE)
            + _string(client_id)
            + _string(username)
            + _string(password)
        )
        self.sock.sendall(_packet(0x10, body))
        packet = self._read_one()
        if packet[0] >> 4 != _CONNACK or packet[1][1] != 0:
            raise MqttError(f"broker refused the connection: {packet!r}")
        self.sock.setblocking(False)

    def _read_one(self) -> tuple[int, bytes]:
        """Block until one whole packet arrived (the CONNACK)."""
        while True:
            packets = self._packets()
            if packets:
                if len(packets) > 1:
                    raise MqttError("unexpected packets before CONNACK")
                return packets[0]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise MqttError("the broker closed the connection")
            self._buffer += chunk

    def _packets(self) -> list[tuple[int, bytes]]:
        """Take the complete packets out of the buffer as ``(first byte, body)``."""
        buffer, pos, size = self._buffer, 0, len(self._buffer)
        packets: list[tuple[int, bytes]] = []
        while pos + 2 <= size:
            length, shift, index, complete = 0, 0, pos + 1, False
            while index < size and index < pos + 5:
                byte = buffer[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if index >= pos + 5:
                    raise MqttError("malformed MQTT remaining length")
                break
            end = index + length
            if end > size:
                break
            packets.append((buffer[pos], bytes(buffer[index:end])))
            pos = end
        del buffer[:pos]
        return packets

    def subscribe(self, topic_list: list[str]) -> int:
        """Send one SUBSCRIBE (QoS 1) for ``topic_list``; returns its packet id."""
        packet_id = self._packet_id()
        body = _U16.pack(packet_id) + b"".join(_string(t) + b"\x01" for t in topic_list)
        self._out.append(_packet(0x82, body))
        return packet_id

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 publish (written by the next :meth:`flush`)."""
        body = _string(topic) + _U16.pack(self._packet_id()) + payload
        self._out.append(_packet(0x32, body))

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def feed(self) -> list[tuple[str, bytes]]:
        """Read what the socket holds; return the publishes received (topic, payload)."""
        try:
            chunk = self.sock.recv(262144)
        except BlockingIOError:
            return []
        if not chunk:
            raise MqttError("the broker closed the connection")
        self._buffer += chunk
        received: list[tuple[str, bytes]] = []
        for first, body in self._packets():
            kind = first >> 4
            if kind == _PUBLISH:
                qos = (first >> 1) & 3
                topic_end = 2 + _U16.unpack_from(body)[0]
                topic = body[2:topic_end].decode()
                if qos:
                    self._out.append(b"\x40\x02" + body[topic_end : topic_end + 2])
                    topic_end += 2
                received.append((topic, body[topic_end:]))
            elif kind == _PUBACK:
                self.pubacks += 1
            elif kind == _SUBACK:
                if b"\x80" in body[2:]:
                    raise MqttError("the broker refused a subscription")
                self.subacks.add(_U16.unpack_from(body)[0])
            elif kind != _PINGRESP:
                raise MqttError(f"unexpected MQTT packet type {kind}")
        return received

    def flush(self) -> None:
        """Write everything queued (PUBACKs, publishes, subscribes) in one go."""
        if not self._out:
            return
        data, self._out = b"".join(self._out), []
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)
        self.last_write = time.monotonic()

    def ping_if_idle(self, now: float) -> None:
        """Keep the session alive across idle stretches between rounds."""
        if now - self.last_write > KEEPALIVE / 2:
            self._out.append(b"\xc0\x00")
            self.flush()

    def close(self) -> None:
        """Send DISCONNECT and close the socket."""
        with contextlib.suppress(OSError):
            self._out.append(b"\xe0\x00")
            self.flush()
        self.sock.close()


class _Devices:
    """One process's devices: their trusted states and the round in progress."""

    def __init__(self, device_ids: list[str], anchor: tuple[bytes, bytes]) -> None:
        # Imported here: only the simulator processes play the device.
        from device_agent.trust import accept_manifest, initial_state  # noqa: PLC0415
        from protocols.messages import encode_message  # noqa: PLC0415

        self._accept = accept_manifest
        self._encode = encode_message
        kid, key = anchor
        anchors = (TrustAnchor(kid=kid, alg=-8, key=key, role="manifest"),)
        self.states = {d: initial_state(d, anchors) for d in device_ids}
        self.up = {d: topics.device_up(d, topics.UpKind.MANIFEST_ACK) for d in device_ids}
        self.mode, self.target, self.count, self.last = "count", 0, 0, 0.0
        self.stats: Counter[str] = Counter()

    def arm(self, mode: str, target: int) -> None:
        self.mode, self.target, self.count, self.last = mode, target, 0, 0.0
        self.stats.clear()

    @property
    def done(self) -> bool:
        return self.count >= self.target > 0

    def handle(self, connection: LiteMqtt, topic: str, payload: bytes) -> None:
        """Count a message or, in device mode, verify it and queue the device's ack."""
        if self.mode == "device":
            self.stats[self._verify_and_ack(connection, topic, payload)] += 1
        else:
            self.stats["received"] += 1
        self.count += 1
        if self.count == self.target:
            self.last = time.monotonic()

    def _verify_and_ack(self, connection: LiteMqtt, topic: str, payload: bytes) -> str:
        from device_agent.trust import TrustError  # noqa: PLC0415

        device_id = topic.split("/", 2)[1]
        message = decode_message(payload)
        if not isinstance(message, ManifestDelivery):
            return "not_a_delivery"
        state = self.states[device_id]
        try:
            accepted = self._accept(state, message.signed, now=int(time.time()))
        except TrustError as exc:
            ack = ManifestAck(seq=state.manifest_seq, status="rejected", reason=exc.code)
            kind = "rejected"
        else:
            self.states[device_id] = accepted.state
            ack = ManifestAck(seq=accepted.manifest.seq, status=accepted.status)
            kind = accepted.status
        connection.publish(self.up[device_id], self._encode(ack))
        return kind


def devices_main(
    conn: Connection,
    port: int,
    credentials: tuple[str, str],
    device_ids: list[str],
    clients: int,
    anchor: tuple[bytes, bytes],
    name: str,
) -> None:
    """One simulated-devices process: ``clients`` connections on one selector.

    Commands on ``conn``: ``("expect", mode, n)`` arms a round (``"count"`` or
    ``"device"``) and answers ``("armed",)``; the process answers ``("done",
    t_last, stats, cpu_seconds)`` once ``n`` messages were handled (``t_last``:
    ``time.monotonic()`` of the last one). ``("stop",)`` ends it.
    """
    username, password = credentials
    devices = _Devices(device_ids, anchor)
    connections = [
        LiteMqtt("127.0.0.1", port, f"{name}-{i}", username, password) for i in range(clients)
    ]
    try:
        _subscribe_all(connections, [device_ids[i::clients] for i in range(clients)])
        conn.send(("ready",))
        _serve(conn, connections, devices)
    finally:
        for connection in connections:
            connection.close()


def _subscribe_all(connections: list[LiteMqtt], shares: list[list[str]]) -> None:
    pending: set[tuple[int, int]] = set()
    for index, (connection, ids) in enumerate(zip(connections, shares, strict=True)):
        for start in range(0, len(ids), SUBSCRIBE_CHUNK):
            chunk = ids[start : start + SUBSCRIBE_CHUNK]
            topic_list = [topics.device_down(d, topics.DownKind.MANIFEST) for d in chunk]
            pending.add((index, connection.subscribe(topic_list)))
        connection.flush()
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for index, connection in enumerate(connections):
            connection.feed()
            pending -= {(index, packet_id) for packet_id in connection.subacks}
        time.sleep(0.01)
    if pending:
        raise MqttError("the simulated devices' subscriptions were not acknowledged")


def _serve(conn: Connection, connections: list[LiteMqtt], devices: _Devices) -> None:
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
    selector.register(conn, selectors.EVENT_READ, None)
    cpu = time.process_time()
    armed = False
    while True:
        for key, _ in selector.select(timeout=1.0):
            connection = key.data
            if connection is None:
                command = conn.recv()
                if command[0] == "stop":
                    return
                devices.arm(command[1], command[2])
                armed, cpu = True, time.process_time()
                conn.send(("armed",))
                continue
            for topic, payload in connection.feed():
                devices.handle(connection, topic, payload)
            connection.flush()
        if armed and devices.done:
            armed = False
            cpu_used = time.process_time() - cpu
            conn.send(("done", devices.last, dict(devices.stats), cpu_used))
        now = time.monotonic()
        for connection in connections:
            connection.ping_if_idle(now)


class Simulator:
    """The simulated devices' processes, driven over pipes."""

    def __init__(
        self,
        port: int,
        credentials: tuple[str, str],
        device_ids: list[str],
        anchor: tuple[bytes, bytes],
        *,
        processes: int = 2,
        clients_per_process: int = 2,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._shares = [device_ids[i::processes] for i in range(processes)]
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        self.cpu_seconds = 0.0
        for index, share in enumerate(self._shares):
            parent, child = context.Pipe()
            process = context.Process(
                target=devices_main,
                args=(child, port, credentials, share, clients_per_process, anchor, f"sim{index}"),
                name=f"bench-devices-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
        for pipe in self._pipes:
            self._expect(pipe, "ready", 120)

    def arm(self, mode: str) -> None:
        """Start a round: every device expects one message (counted or verified)."""
        for pipe, share in zip(self._pipes, self._shares, strict=True):
            pipe.send(("expect", mode, len(share)))
        for pipe in self._pipes:
            self._expect(pipe, "armed", 30)

    def wait(self, timeout: float) -> tuple[float, dict[str, int]]:
        """Wait for the round's end: ``time.monotonic()`` of the last message, stats.

        The processes' CPU seconds for the round are kept in :attr:`cpu_seconds`.
        """
        last, stats, cpu = 0.0, Counter[str](), 0.0
        for pipe in self._pipes:
            reply = self._recv(pipe, timeout)
            if reply[0] != "done":
                raise RuntimeError(f"simulated devices: {reply!r}")
            last = max(last, float(reply[1]))
            stats.update(reply[2])
            cpu += float(reply[3])
        self.cpu_seconds = cpu
        return last, dict(stats)

    def stop(self) -> None:
        """Stop the processes (by their own handles); kill any that does not stop."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("stop",))
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)

    def _expect(self, pipe: Connection, what: str, timeout: float) -> None:
        reply = self._recv(pipe, timeout)
        if reply[0] != what:
            raise RuntimeError(f"simulated devices answered {reply!r}, expected {what!r}")

    @staticmethod
    def _recv(pipe: Connection, timeout: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"simulated devices silent for {timeout:.0f}s")
        reply: tuple[Any, ...] = pipe.recv()
        return reply
