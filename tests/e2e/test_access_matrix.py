"""The access-control matrix, run against both brokers the hub can use.

Every negative check is paired with a positive control on the same path: a
forbidden message is sent first, then an allowed sentinel; once the sentinel
arrives, a short grace period shows the forbidden one never will.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub.broker.embedded import PACKET_HEADROOM, EmbeddedBroker
from hub.broker.mosquitto import ManagedClaimMosquitto, ManagedMosquitto
from hub.broker.passwords import hash_password
from hub.broker.principals import Principal, PrincipalKind
from hub.errors import PortInUse
from tests.backends import mosquitto_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
MAX_PAYLOAD = 1024
GRACE = 0.5  # after a sentinel arrived, how long a forbidden message gets to show up
WAIT = 5.0  # upper bound for anything that should happen
SECRETS = {"dev-a": "secret-a", "dev-b": "secret-b", "hub-main": "secret-hub"}


class DictVerifier:
    """In-memory CredentialVerifier: hashed device and hub secrets, claims admitted."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.hashes = {name: hash_password(secret) for name, secret in secrets.items()}
        self.refused: set[str] = set()  # e.g. devices disabled since they logged in

    def verify(self, username: str, password: str | None) -> Principal | None:
        from hub.broker.passwords import verify_password

        if username in self.refused:
            return None
        if username.startswith("claim-"):
            return Principal(PrincipalKind.CLAIM, username)  # sandboxed, any password
        stored = self.hashes.get(username)
        if stored is None or password is None or not verify_password(password, stored):
            return None
        kind = PrincipalKind.HUB if username.startswith("hub-") else PrincipalKind.DEVICE
        return Principal(kind, username)


@dataclass
class Endpoint:
    name: str
    port: int  # devices and the hub
    claim_port: int  # claim sessions (agents)
    hub_claim_port: int  # where the hub serves claims

    embedded: EmbeddedBroker | None = None  # amqtt: the broker object (kick)
    runner: LoopThread | None = None  # amqtt: the loop it runs in
    verifier: DictVerifier | None = None  # amqtt: its verifier

    @property
    def separate_claims(self) -> bool:
        """Mosquitto: claims live in their own broker process."""
        return self.claim_port != self.port


class LoopThread:
    """An asyncio loop in a background thread, like the hub's serve loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=WAIT * 2)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module")
def amqtt_endpoint() -> Iterator[Endpoint]:
    runner = LoopThread()
    verifier = DictVerifier(SECRETS)
    broker = EmbeddedBroker(host=HOST, port=0, verifier=verifier, max_payload_bytes=MAX_PAYLOAD)
    runner.run(broker.start())
    try:
        yield Endpoint("amqtt", broker.port, broker.port, broker.port, broker, runner, verifier)
    finally:
        runner.run(broker.stop())
        runner.close()


@pytest.fixture(scope="module")
def mosquitto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("no mosquitto binary (set HUB_TEST_MOSQUITTO or install mosquitto)")
    hashes = DictVerifier(SECRETS).hashes
    directory = tmp_path_factory.mktemp("mosquitto")
    broker = ManagedMosquitto(
        binary=binary,
        directory=directory / "devices",
        host=HOST,
        port=0,
        hub_username="hub-main",
        hub_password_hash=hashes["hub-main"],
        device_credentials=[("dev-a", hashes["dev-a"]), ("dev-b", hashes["dev-b"])],
        max_payload_bytes=MAX_PAYLOAD,
    )
    claims = ManagedClaimMosquitto(
        binary=binary,
        directory=directory / "claims",
        host=HOST,
        port=0,
        hub_username="hub-main",
        hub_password_hash=hashes["hub-main"],
        max_payload_bytes=MAX_PAYLOAD,
    )
    broker.start()
    try:
        claims.start()
        yield Endpoint("mosquitto", broker.port, claims.port, claims.hub_port)
    finally:
        claims.stop()
        broker.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> Endpoint:
    return request.getfixturevalue(f"{request.param}_endpoint")  # type: ignore[no-any-return]


@dataclass
class Client:
    """A paho 2 (MQTT 3.1.1) client that records what happens to it."""

    paho: mqtt.Client
    connack: queue.Queue[int] = field(default_factory=queue.Queue)
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    disconnects: list[str] = field(default_factory=list)
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def subscribe(self, topic_filter: str) -> int:
        self.paho.subscribe(topic_filter, qos=1)
        return self.subacks.get(timeout=WAIT)[0]

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> None:
        self.paho.publish(topic, payload, qos=1, retain=retain)

    def wait_disconnected(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.disconnects, "expected the broker to close the connection"
        self.paho.loop_stop()

    def expect(self, topic: str, payload: bytes) -> None:
        """Wait for (topic, payload); everything received meanwhile stays in ``seen``."""
        deadline = time.monotonic() + WAIT
        while (topic, payload) not in self.seen:
            self.seen.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))

    def settle(self, *, wait: bool = True) -> list[tuple[str, bytes]]:
        """Collect everything that arrives within the grace period.

        ``wait=False`` for a client checked right after another one's grace period.
        """
        if wait:
            time.sleep(GRACE)
        while not self.messages.empty():
            self.seen.append(self.messages.get_nowait())
        return self.seen

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def connect(
    port: int, client_id: str, username: str | None, password: str | None, *, clean: bool = True
) -> tuple[Client, int]:
    """Connect and return the client and its CONNACK code (0 = accepted)."""
    paho = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
    )
    paho.reconnect_delay_set(60, 60)  # never silently reconnect during a test
    client = Client(paho)
    if username is not None:
        paho.username_pw_set(username, password)
    paho.on_connect = lambda _c, _u, _f, rc, _p: client.connack.put(rc.value)
    paho.on_message = lambda _c, _u, m: client.messages.put((m.topic, bytes(m.payload)))
    paho.on_subscribe = lambda _c, _u, _m, rcs, _p: client.subacks.put([r.value for r in rcs])

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        client.disconnects.append(str(rc))
        client.connack.put(-1)  # closed before (or after) CONNACK: stop waiting

    paho.on_disconnect = on_disconnect
    paho.connect(HOST, port, keepalive=30)
    paho.loop_start()
    try:
        code = client.connack.get(timeout=WAIT)
    except queue.Empty:
        code = -1  # closed without CONNACK
    if code != 0:
        paho.loop_stop()
    return client, code


def login(port: int, name: str, *, clean: bool = True) -> Client:
    client, code = connect(port, name, name, SECRETS.get(name, "any"), clean=clean)
    assert code == 0, f"{name} refused: {code}"
    return client


def claim_login(broker: Endpoint, name: str) -> Client:
    return login(broker.claim_port, name)


def hub_claim_login(broker: Endpoint) -> Client:
    """The hub on the claim broker: its username, a secret random client id."""
    client_id = f"hub-main-{secrets.token_hex(16)}"
    client, code = connect(broker.hub_claim_port, client_id, "hub-main", SECRETS["hub-main"])
    assert code == 0, f"hub refused on the claim broker: {code}"
    return client


@pytest.fixture
def hub(broker: Endpoint) -> Iterator[Client]:
    client = login(broker.port, "hub-main")
    assert client.subscribe("d/+/up/#") == 1
    if not broker.separate_claims:
        assert client.subscribe("claim/+/req") == 1
    yield client
    client.close()


@pytest.fixture
def hub_claims(broker: Endpoint, hub: Client) -> Iterator[Client]:
    """The hub's claim connection: ``hub`` itself on amqtt, its own on Mosquitto."""
    if not broker.separate_claims:
        yield hub
        return
    client = hub_claim_login(broker)
    assert client.subscribe("claim/+/req") == 1
    yield client
    client.close()


@pytest.fixture
def dev_a(broker: Endpoint) -> Iterator[Client]:
    client = login(broker.port, "dev-a")
    assert client.subscribe("d/dev-a/down/#") == 1
    yield client
    client.close()


def test_hub_does_its_job(broker: Endpoint, hub: Client, hub_claims: Client, dev_a: Client) -> None:
    dev_a.publish("d/dev-a/up/hello", b"hi")
    hub.expect("d/dev-a/up/hello", b"hi")
    hub.publish("d/dev-a/down/state", b"state")
    dev_a.expect("d/dev-a/down/state", b"state")
    for name, password in (("claim-k1", "claim"), ("claim-k1b", None)):
        claim, code = connect(broker.claim_port, name, name, password)
        assert code == 0, f"{name} refused: {code}"
        assert claim.subscribe(f"claim/{name}/res") == 1
        claim.publish(f"claim/{name}/req", b"req")
        hub_claims.expect(f"claim/{name}/req", b"req")
        hub_claims.publish(f"claim/{name}/res", b"res")
        claim.expect(f"claim/{name}/res", b"res")
        claim.close()


FOREIGN_FILTERS = [
    "d/dev-a/down/#",
    "d/dev-a/#",
    "#",
    "+/#",
    "$SYS/#",
    "d/+/up/#",
    "d/+/down/#",
    "d/+/+/+",
    "claim/+/req",
    "$share/g/d/+/down/#",
]


def test_device_never_receives_another_devices_messages(
    broker: Endpoint, hub: Client, dev_a: Client
) -> None:
    dev_b = login(broker.port, "dev-b")
    for topic_filter in FOREIGN_FILTERS:
        code = dev_b.subscribe(topic_filter)
        # Mosquitto 2 acknowledges and then filters at delivery; amqtt refuses.
        assert code == 0x80 or broker.name == "mosquitto", topic_filter
    assert dev_b.subscribe("d/dev-b/down/#") == 1
    hub.publish("d/dev-a/down/state", b"for-a")
    dev_a.publish("d/dev-a/up/status", b"from-a")
    hub.expect("d/dev-a/up/status", b"from-a")
    hub.publish("d/dev-b/down/state", b"sentinel")
    dev_b.expect("d/dev-b/down/state", b"sentinel")
    assert dev_b.settle() == [("d/dev-b/down/state", b"sentinel")]
    dev_b.close()


def test_device_cannot_publish_outside_its_up_tree(
    broker: Endpoint, hub: Client, hub_claims: Client, dev_a: Client
) -> None:
    claim = claim_login(broker, "claim-k2")
    assert claim.subscribe("claim/claim-k2/res") == 1
    dev_b = login(broker.port, "dev-b")
    for topic in (
        "d/dev-a/up/hello",
        "d/dev-b/up/a/b",  # up kinds are one level: d/{id}/up/+
        "d/dev-b/up",
        "d/dev-a/down/state",
        "d/dev-b/down/state",
        "claim/claim-k2/res",
        "claim/claim-k2/req",
    ):
        dev_b.publish(topic, b"forged")
    dev_b.publish("d/dev-b/up/hello", b"sentinel")
    hub.expect("d/dev-b/up/hello", b"sentinel")
    hub.publish("d/dev-a/down/state", b"sentinel")
    hub_claims.publish("claim/claim-k2/res", b"sentinel")
    dev_a.expect("d/dev-a/down/state", b"sentinel")
    claim.expect("claim/claim-k2/res", b"sentinel")
    for observer in {id(c): c for c in (hub, hub_claims, dev_a, claim)}.values():
        assert all(payload != b"forged" for _, payload in observer.settle())
    dev_b.close()
    claim.close()


REFUSED_LOGINS = [
    ("dev-a", "dev-a", "wrong"),
    ("dev-a", "dev-a", None),
    ("dev-a", None, None),
    ("dev-x", "dev-x", "secret-a"),
    ("dev-a+", "dev-a+", "secret-a"),
    ("dev-a/#", "dev-a/#", "secret-a"),
    ("#", "#", "secret-a"),
    ("dev-\x01a", "dev-\x01a", "secret-a"),
    ("hub-main", "hub-main", "secret-a"),
]


@pytest.mark.parametrize(("client_id", "username", "password"), REFUSED_LOGINS)
def test_bad_logins_are_refused_at_connect(
    broker: Endpoint, client_id: str, username: str | None, password: str | None
) -> None:
    _, code = connect(broker.port, client_id, username, password)
    assert code != 0


def test_client_id_other_than_username_gets_no_other_identity(
    broker: Endpoint, hub: Client
) -> None:
    dev_b = login(broker.port, "dev-b")
    assert dev_b.subscribe("d/dev-b/down/#") == 1
    imposter, code = connect(broker.port, "dev-b", "dev-a", SECRETS["dev-a"])
    if code == 0:
        # Mosquitto's use_username_as_clientid: the session *is* dev-a, not dev-b.
        assert broker.name == "mosquitto"
        imposter.publish("d/dev-b/up/hello", b"forged")
        imposter.publish("d/dev-a/up/hello", b"as-a")
        hub.expect("d/dev-a/up/hello", b"as-a")
        imposter.close()
    hub.publish("d/dev-b/down/state", b"still-b")
    dev_b.expect("d/dev-b/down/state", b"still-b")
    assert all(payload != b"forged" for _, payload in hub.settle())
    assert dev_b.disconnects == []
    dev_b.close()


def test_refused_login_does_not_disturb_connected_session(
    broker: Endpoint, hub: Client, dev_a: Client
) -> None:
    for clean in (True, False):
        _, code = connect(broker.port, "dev-a", "dev-a", "wrong", clean=clean)
        assert code != 0
        _, code = connect(broker.port, "dev-a", None, None, clean=clean)
        assert code != 0
    hub.publish("d/dev-a/down/state", b"after")
    dev_a.expect("d/dev-a/down/state", b"after")
    dev_a.publish("d/dev-a/up/status", b"alive")
    hub.expect("d/dev-a/up/status", b"alive")
    assert dev_a.disconnects == []


def test_claim_session_only_uses_its_own_pair(broker: Endpoint, hub_claims: Client) -> None:
    other = claim_login(broker, "claim-k3")
    assert other.subscribe("claim/claim-k3/res") == 1
    claim = claim_login(broker, "claim-k4")
    for topic_filter in (
        "claim/claim-k3/res",
        "claim/+/res",
        "claim/+/req",
        "claim/#",
        "#",
        "$SYS/#",
        "d/+/down/#",
    ):
        code = claim.subscribe(topic_filter)
        # Mosquitto acknowledges and filters at delivery; amqtt refuses.
        assert code == 0x80 or broker.name == "mosquitto", topic_filter
    assert claim.subscribe("claim/claim-k4/res") == 1
    for topic in (
        "claim/claim-k3/req",
        "claim/other/req",
        "claim/claim-k4/res",
        "claim/claim-k3/res",
        "d/dev-a/up/hello",
    ):
        claim.publish(topic, b"forged")
    claim.publish("claim/claim-k4/req", b"sentinel")
    hub_claims.expect("claim/claim-k4/req", b"sentinel")
    hub_claims.publish("claim/claim-k3/res", b"for-k3")
    hub_claims.publish("claim/claim-k4/res", b"for-k4")
    other.expect("claim/claim-k3/res", b"for-k3")
    claim.expect("claim/claim-k4/res", b"for-k4")
    assert claim.settle() == [("claim/claim-k4/res", b"for-k4")]
    assert all(payload != b"forged" for _, payload in hub_claims.settle() + other.settle())
    claim.close()
    other.close()


ODD_CLAIM_IDS = ["claim-x/#", "claim-x/+", "+", "#", "claim-k5/res", "claim/claim-k5", "a/b"]


def test_odd_claim_client_ids_gain_nothing(broker: Endpoint, hub_claims: Client) -> None:
    """%c with ``+``/``#``/``/`` in the id: Mosquitto denies ``+``/``#`` ids every
    ACL check; ``/`` ids only get deeper topics that nobody else uses."""
    victim = claim_login(broker, "claim-k5")
    assert victim.subscribe("claim/claim-k5/res") == 1
    odd: list[Client] = []
    for client_id in ODD_CLAIM_IDS:
        client, code = connect(broker.claim_port, client_id, None, None)
        if code != 0:
            assert broker.name == "amqtt", client_id  # not a claim id: refused
            continue
        for topic_filter in ("#", "claim/+/res", "claim/+/+", "claim/claim-k5/res"):
            client.subscribe(topic_filter)
        client.publish("claim/claim-k5/req", b"forged")
        client.publish("claim/other/req", b"forged")
        if "+" not in client_id and "#" not in client_id:
            client.publish(f"claim/{client_id}/req", b"forged")
        odd.append(client)
    victim.publish("claim/claim-k5/req", b"sentinel")
    hub_claims.expect("claim/claim-k5/req", b"sentinel")
    hub_claims.publish("claim/claim-k5/res", b"for-k5")
    victim.expect("claim/claim-k5/res", b"for-k5")
    assert victim.settle() == [("claim/claim-k5/res", b"for-k5")]
    assert all(payload != b"forged" for _, payload in hub_claims.settle(wait=False))
    for client in odd:
        assert client.settle(wait=False) == []
        client.close()
    victim.close()


def test_hub_username_without_its_password_gets_nothing(
    broker: Endpoint, hub_claims: Client
) -> None:
    if broker.separate_claims:  # the claim broker's hub listener (device port: REFUSED_LOGINS)
        random_id = f"hub-main-{secrets.token_hex(4)}"
        for client_id, password in (("hub-main", None), (random_id, None), (random_id, "wrong")):
            _, code = connect(broker.hub_claim_port, client_id, "hub-main", password)
            assert code != 0, (client_id, password)
    # The claim listener: amqtt refuses; Mosquitto admits the username as a
    # plain anonymous claim client, confined to claim/<client id>/.
    victim = claim_login(broker, "claim-k6")
    assert victim.subscribe("claim/claim-k6/res") == 1
    impostor, code = connect(broker.claim_port, "claim-k7", "hub-main", None)
    if code != 0:
        assert broker.name == "amqtt"
    else:
        assert broker.separate_claims
        for topic_filter in ("claim/+/req", "claim/+/res", "#"):
            impostor.subscribe(topic_filter)
        impostor.publish("claim/claim-k6/res", b"forged")
    victim.publish("claim/claim-k6/req", b"sentinel")
    hub_claims.expect("claim/claim-k6/req", b"sentinel")
    hub_claims.publish("claim/claim-k6/res", b"for-k6")
    victim.expect("claim/claim-k6/res", b"for-k6")
    assert victim.settle() == [("claim/claim-k6/res", b"for-k6")]
    if code == 0:
        assert impostor.settle(wait=False) == []
        impostor.close()
    victim.close()


def test_oversize_payload_is_not_delivered(broker: Endpoint, hub: Client) -> None:
    dev_b = login(broker.port, "dev-b")
    dev_b.publish("d/dev-b/up/hello", b"x" * MAX_PAYLOAD)
    hub.expect("d/dev-b/up/hello", b"x" * MAX_PAYLOAD)
    dev_b.publish("d/dev-b/up/hello", b"y" * (MAX_PAYLOAD + 1))
    dev_b.publish("d/dev-b/up/hello", b"sentinel")
    hub.expect("d/dev-b/up/hello", b"sentinel")
    assert all(len(payload) <= MAX_PAYLOAD for _, payload in hub.settle())
    dev_b.close()


def test_packet_announcing_huge_length_closes_connection(broker: Endpoint) -> None:
    sock = raw_connect(broker.port, "dev-b", "dev-b", SECRETS["dev-b"])
    topic = b"d/dev-b/up/hello"
    remaining = MAX_PAYLOAD + PACKET_HEADROOM + 100
    sock.sendall(b"\x30" + _varint(remaining) + struct.pack("!H", len(topic)) + topic)
    sock.settimeout(WAIT)
    try:
        assert sock.recv(1) == b""  # closed without waiting for the body
    except ConnectionResetError:
        pass  # Mosquitto resets rather than closes
    finally:
        sock.close()


def test_will_on_foreign_topic_is_never_published(broker: Endpoint, dev_a: Client) -> None:
    will = ("d/dev-a/down/state", b"forged-will")
    try:
        sock = raw_connect(broker.port, "dev-b", "dev-b", SECRETS["dev-b"], will=will)
    except ConnectionRefusedError:
        pass  # refused at CONNECT (amqtt guard; Mosquitto checks the will ACL too)
    else:
        sock.close()  # abrupt close: the broker would now publish the will
    hub_client = login(broker.port, "hub-main")
    hub_client.publish("d/dev-a/down/state", b"sentinel")
    dev_a.expect("d/dev-a/down/state", b"sentinel")
    assert all(payload != b"forged-will" for _, payload in dev_a.settle())
    hub_client.close()


def test_retained_will_is_refused_at_connect(broker: Endpoint) -> None:
    will = ("d/dev-b/up/status", b"retained-will")
    with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
        # amqtt: CONNACK 5; Mosquitto 2.0.11 (retain_available false): closed, no CONNACK
        raw_connect(broker.port, "dev-b", "dev-b", SECRETS["dev-b"], will=will, will_retain=True)
    raw_connect(broker.port, "dev-b", "dev-b", SECRETS["dev-b"], will=will).close()  # control


def _publish_retained(broker: Endpoint, port: int, name: str, topic: str) -> Client:
    """Publish a retained message as ``name``; return a connected client of ``name``.

    Mosquitto 2.0.11 with ``retain_available false`` disconnects the client
    (no PUBACK); amqtt drops the message and keeps the connection.
    """
    client = login(port, name)
    client.publish(topic, b"retained", retain=True)
    if broker.name == "mosquitto":
        client.wait_disconnected()
        return login(port, name)
    return client


def test_retained_messages_are_never_stored(broker: Endpoint) -> None:
    live = login(broker.port, "hub-main")
    assert live.subscribe("d/+/up/#") == 1
    dev_b = _publish_retained(broker, broker.port, "dev-b", "d/dev-b/up/status")
    claim = _publish_retained(broker, broker.claim_port, "claim-r1", "claim/claim-r1/req")
    dev_b.publish("d/dev-b/up/hello", b"sentinel")  # after the retained one, same client
    live.expect("d/dev-b/up/hello", b"sentinel")
    assert all(payload != b"retained" for _, payload in live.settle(wait=False))
    live.close()
    # Later subscribers (the hub user) get no retained copy on subscribing.
    later = login(broker.port, "hub-main")
    assert later.subscribe("d/+/up/#") == 1
    later_claims = hub_claim_login(broker) if broker.separate_claims else later
    assert later_claims.subscribe("claim/+/req") == 1
    dev_b.publish("d/dev-b/up/hello", b"sentinel-2")
    claim.publish("claim/claim-r1/req", b"sentinel-2")
    later.expect("d/dev-b/up/hello", b"sentinel-2")
    later_claims.expect("claim/claim-r1/req", b"sentinel-2")
    seen = later.settle() + (later_claims.settle(wait=False) if broker.separate_claims else [])
    assert all(payload != b"retained" for _, payload in seen)
    assert dev_b.disconnects == [] and claim.disconnects == []
    for client in {id(c): c for c in (dev_b, claim, later, later_claims)}.values():
        client.close()


def test_disconnect_client_throws_a_device_out(amqtt_endpoint: Endpoint) -> None:
    """amqtt only: Mosquitto 2.0.11 has no kick without the dynamic-security plugin."""
    endpoint = amqtt_endpoint
    embedded, runner, verifier = endpoint.embedded, endpoint.runner, endpoint.verifier
    assert embedded is not None and runner is not None and verifier is not None
    hub_client = login(endpoint.port, "hub-main")
    assert hub_client.subscribe("d/+/up/#") == 1
    device = login(endpoint.port, "dev-a")
    assert device.subscribe("d/dev-a/down/#") == 1
    assert runner.run(embedded.disconnect_client("dev-a")) is True
    device.wait_disconnected()
    assert runner.run(embedded.disconnect_client("dev-a")) is False  # gone, not connected
    assert runner.run(embedded.disconnect_client("dev-nobody")) is False
    verifier.refused.add("dev-a")  # disabled: the re-login is authenticated afresh
    try:
        for clean in (True, False):
            _, code = connect(endpoint.port, "dev-a", "dev-a", SECRETS["dev-a"], clean=clean)
            assert code != 0
    finally:
        verifier.refused.discard("dev-a")
    again = login(endpoint.port, "dev-a")  # re-enabled: a fresh session and principal
    assert again.subscribe("d/dev-a/down/#") == 1
    hub_client.publish("d/dev-a/down/state", b"welcome-back")
    again.expect("d/dev-a/down/state", b"welcome-back")
    again.publish("d/dev-a/up/hello", b"hi")
    hub_client.expect("d/dev-a/up/hello", b"hi")
    assert device.settle(wait=False) == []
    again.close()
    hub_client.close()


def test_legitimate_reconnect_takes_over(broker: Endpoint, hub: Client) -> None:
    first = login(broker.port, "dev-b")
    second = login(broker.port, "dev-b")
    assert second.subscribe("d/dev-b/down/#") == 1
    deadline = time.monotonic() + WAIT
    while not first.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.disconnects, "the old connection must be closed, not left running"
    hub.publish("d/dev-b/down/state", b"to-new")
    second.expect("d/dev-b/down/state", b"to-new")
    first.paho.loop_stop()
    second.close()


def test_claim_client_with_a_device_id_does_not_disturb_the_device(
    broker: Endpoint, hub: Client, hub_claims: Client, dev_a: Client
) -> None:
    """The Mosquitto claim broker is its own process: its client ids are not the
    device broker's, so ``dev-a`` there cannot take ``dev-a`` here over."""
    intruders: list[Client] = []
    for clean in (False, True):
        intruder, code = connect(broker.claim_port, "dev-a", None, None, clean=clean)
        if code != 0:
            assert broker.name == "amqtt"  # refused: claim ids must start with claim-
            continue
        assert broker.separate_claims
        intruder.subscribe("d/dev-a/down/#")
        intruder.subscribe("#")
        intruder.publish("claim/dev-a/req", b"sentinel")
        hub_claims.expect("claim/dev-a/req", b"sentinel")  # it is live on the claim broker
        intruders.append(intruder)
    for round_ in range(3):
        hub.publish("d/dev-a/down/state", f"after-{round_}".encode())
        dev_a.expect("d/dev-a/down/state", f"after-{round_}".encode())
    dev_a.publish("d/dev-a/up/status", b"alive")
    hub.expect("d/dev-a/up/status", b"alive")
    assert dev_a.disconnects == []
    for index, intruder in enumerate(intruders):
        assert intruder.settle(wait=index == 0) == []
        intruder.close()


def test_device_broker_admits_no_anonymous_or_claim_login(broker: Endpoint) -> None:
    for client_id in ("claim-k8", "dev-a", "anything"):
        _, code = connect(broker.port, client_id, None, None)
        assert code != 0, client_id
    # amqtt serves claims on its one port (sandboxed); Mosquitto's device broker never.
    _, code = connect(broker.port, "claim-k8", "claim-k8", "claim")
    assert (code != 0) == broker.separate_claims


def test_stock_amqtt_lets_a_refused_login_disturb_a_session() -> None:
    """Witness for the guard in hub.broker.embedded: plain amqtt 0.12 has the flaw.

    If this starts failing, amqtt fixed pre-auth session handling and the
    guard can be revisited.
    """
    from amqtt.broker import Broker

    from hub.broker.amqtt_plugins import plugin_config

    runner = LoopThread()
    port = _free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        "plugins": plugin_config(DictVerifier(SECRETS)),
    }

    async def make() -> Any:
        stock = Broker(config)
        await stock.start()
        return stock

    stock = runner.run(make())
    try:
        hub_client = login(port, "hub-main")
        victim = login(port, "dev-a")
        assert victim.subscribe("d/dev-a/down/#") == 1
        _, code = connect(port, "dev-a", "dev-a", "wrong")
        assert code != 0
        hub_client.publish("d/dev-a/down/state", b"lost")
        hub_client.publish("d/dev-a/down/state", b"lost")
        assert ("d/dev-a/down/state", b"lost") not in victim.settle()
        victim.close()
        hub_client.close()
    finally:
        runner.run(stock.shutdown())
        runner.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_taken_port_is_reported_clearly() -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = EmbeddedBroker(
            host=HOST, port=port, verifier=DictVerifier({}), max_payload_bytes=MAX_PAYLOAD
        )
        with pytest.raises(PortInUse, match=rf"{port}.*--mqtt-port.*HUB_MQTT_PORT"):
            asyncio.run(broker.start())
        binary = mosquitto_binary()
        if binary is not None:
            managed = ManagedMosquitto(
                binary=binary,
                directory=Path("/nonexistent-not-written"),
                host=HOST,
                port=port,
                hub_username="hub-main",
                hub_password_hash=hash_password("x"),
                device_credentials=[],
                max_payload_bytes=MAX_PAYLOAD,
            )
            with pytest.raises(PortInUse, match=rf"^MQTT port {port} .*--mqtt-port"):
                managed.start()
            for ports, hint in (
                ({"port": port}, "HUB_CLAIM_MQTT_PORT"),
                ({"port": 0, "hub_port": port}, "hub_port"),
            ):
                claims = ManagedClaimMosquitto(
                    binary=binary,
                    directory=Path("/nonexistent-not-written"),
                    host=HOST,
                    hub_username="hub-main",
                    hub_password_hash=hash_password("x"),
                    max_payload_bytes=MAX_PAYLOAD,
                    **ports,
                )
                with pytest.raises(PortInUse, match=rf"claim broker.* {port} .*{hint}"):
                    claims.start()


def raw_connect(
    port: int,
    client_id: str,
    username: str,
    password: str,
    *,
    will: tuple[str, bytes] | None = None,
    will_retain: bool = False,
) -> socket.socket:
    """Send a hand-built MQTT 3.1.1 CONNECT; raise ConnectionRefusedError unless accepted."""
    flags = 0xC2 | (0x0C if will else 0)  # username, password, clean; will QoS 1
    flags |= 0x20 if will_retain else 0
    payload = _string(client_id.encode())
    if will:
        payload += _string(will[0].encode()) + _string(will[1])
    payload += _string(username.encode()) + _string(password.encode())
    body = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    sock = socket.create_connection((HOST, port), timeout=WAIT)
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    connack = sock.recv(4)
    if len(connack) < 4 or connack[3] != 0:
        sock.close()
        raise ConnectionRefusedError(f"CONNACK {connack!r}")
    return sock


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
