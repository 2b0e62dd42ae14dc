import random
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.config import parse_config
from device_agent.errors import ClaimFailed, ConfigError, StateError
from device_agent.identity import Identity, IdentityStore, public_key_bytes
from device_agent.outgoing import Outgoing
from device_agent.runner import AgentRunner, Backoff
from device_agent.session import DeviceSession, build_claim, read_claim_reply
from device_agent.storage import atomic_write, read_optional
from device_agent.transport import Incoming
from protocols import topics
from protocols.errors import ProtocolError
from protocols.messages import (
    ClaimAccepted,
    ClaimRequest,
    ErrorReply,
    Hello,
    State,
    Status,
    TrustAnchor,
    decode_as,
    encode_message,
)

DEV = "dev-00000000000000000001"
ANCHOR = TrustAnchor(kid=b"k" * 8, alg=-8, key=b"\x01" * 32, role="manifest")


def _identity():
    return Identity(device_id=DEV, mqtt_username=DEV, mqtt_password="pw", anchors=(ANCHOR,))


def test_config_defaults_and_relative_paths(tmp_path):
    cfg = parse_config({"device": {"serial": "SN-1"}, "claim": {"token": "t"}}, base=tmp_path)
    assert cfg.state_dir == tmp_path / "state/SN-1"
    assert cfg.claim_port == cfg.broker_port == 1883
    cfg2 = parse_config(
        {"device": {"serial": "SN-1"}, "claim": {"key_file": "k.pem"}, "broker": {"port": 1900}},
        base=tmp_path,
    )
    assert cfg2.claim_key_file == tmp_path / "k.pem" and cfg2.claim_port == 1900


@pytest.mark.parametrize(
    "raw",
    [
        {"device": {"serial": "a/b"}, "claim": {"token": "t"}},
        {"device": {"serial": "SN"}, "claim": {}},
        {"device": {"serial": "SN"}, "claim": {"token": "t", "key_file": "k"}},
        {"device": {"serial": "SN"}, "claim": {"token": "t"}, "broker": {"port": 0}},
        {"device": {"serial": "SN"}, "claim": {"token": "t"}, "broker": {"port": "1883"}},
        {"device": "SN", "claim": {"token": "t"}},
    ],
)
def test_bad_config_is_refused(raw, tmp_path):
    with pytest.raises(ConfigError):
        parse_config(raw, base=tmp_path)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert read_optional(path) == b"two"
    assert read_optional(tmp_path / "missing") is None
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_identity_store_round_trip_and_boot_epoch(tmp_path):
    store = IdentityStore(tmp_path)
    assert store.load() is None
    key = store.load_or_create_device_key()
    assert public_key_bytes(store.load_or_create_device_key()) == public_key_bytes(key)
    store.save(_identity())
    assert IdentityStore(tmp_path).load() == _identity()
    assert [store.next_boot_epoch() for _ in range(3)] == [1, 2, 3]
    store.forget()
    assert store.load() is None


def test_corrupt_identity_is_a_state_error(tmp_path):
    (tmp_path / "identity.cbor").write_bytes(b"\xff\xff")
    with pytest.raises(StateError):
        IdentityStore(tmp_path).load()
    (tmp_path / "device.key").write_bytes(b"short")
    with pytest.raises(StateError):
        IdentityStore(tmp_path).load_or_create_device_key()


def test_claim_request_is_signed_and_bound_to_the_session():
    key = Ed25519PrivateKey.generate()
    out = build_claim(
        client_id="claim-abc", serial="SN-1", key=key, token="hubc_x_y", nonce=b"n" * 16, now=1000
    )
    assert out.topic == "claim/claim-abc/req"
    request = decode_as(ClaimRequest, out.payload)
    assert request.method == "token" and request.pubkey == public_key_bytes(key)
    key.public_key().verify(request.sig, request.signing_input("claim-abc"))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(request.sig, request.signing_input("claim-other"))
    keyed = decode_as(
        ClaimRequest,
        build_claim(
            client_id="claim-abc", serial="SN-1", key=key, token=None, nonce=b"n" * 16, now=1
        ).payload,
    )
    assert keyed.method == "key" and keyed.token is None


def test_claim_reply_reading():
    accepted = ClaimAccepted(
        device_id=DEV, mqtt_username=DEV, mqtt_password="pw", anchors=(ANCHOR,), server_time=5
    )
    assert read_claim_reply(encode_message(accepted)) == _identity()
    with pytest.raises(ClaimFailed) as info:
        read_claim_reply(encode_message(ErrorReply(code="bad_token", message="no")))
    assert info.value.code == "bad_token"
    with pytest.raises(ClaimFailed):
        read_claim_reply(encode_message(Status(online=True)))
    with pytest.raises(ProtocolError):
        read_claim_reply(b"\xff")


def test_device_session_messages():
    session = DeviceSession(_identity(), agent_version="1.0", boot_epoch=7)
    assert session.subscriptions() == [f"d/{DEV}/down/#"]
    assert decode_as(Status, session.will().payload) == Status(online=False)
    status, hello = session.on_connected()
    assert status.topic == topics.device_up(DEV, topics.UpKind.STATUS)
    assert decode_as(Hello, hello.payload) == Hello(
        agent_version="1.0", manifest_seq=0, boot_epoch=7
    )
    state = State(device_id=DEV, server_time=10, manifest_seq=0)
    assert session.on_message(f"d/{DEV}/down/state", encode_message(state), now=1) == []
    assert session.last_state == state


def test_device_session_ignores_bad_and_foreign_input():
    session = DeviceSession(_identity(), agent_version="1.0", boot_epoch=1)
    other = "dev-00000000000000000002"
    foreign = State(device_id=other, server_time=1, manifest_seq=3)
    session.on_message(f"d/{other}/down/state", encode_message(foreign), now=1)
    session.on_message(f"d/{DEV}/down/state", b"\xff\x00", now=1)
    session.on_message(
        f"d/{DEV}/down/state", encode_message(foreign), now=1
    )  # names another device
    session.on_message("weird/topic", b"", now=1)
    assert session.last_state is None
    session.on_message(
        f"d/{DEV}/down/error", encode_message(ErrorReply(code="x", message="y")), now=1
    )
    assert session.last_error is not None and session.last_error.code == "x"


def test_backoff_grows_is_jittered_and_resets():
    backoff = Backoff(0.5, 30.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert max(delays[8:]) > max(delays[:2])
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_state_dir_unwritable_is_a_state_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError):
        atomic_write(blocker / "sub" / "f", b"x")


class _ClaimHub:
    """A scripted claim broker: refuses the first claim as stale, accepts the next."""

    def __init__(self, hub_time: int) -> None:
        self.hub_time = hub_time
        self.claims: list[ClaimRequest] = []
        self._reply: bytes | None = None

    def __call__(self) -> "_ClaimHub":
        return self

    def connect(self, **_: object) -> None:
        return None

    def subscribe(self, topic_filter: str) -> None:
        return None

    def publish(self, message: Outgoing) -> None:
        request = decode_as(ClaimRequest, message.payload)
        self.claims.append(request)
        if abs(request.ts - self.hub_time) > 300:
            refusal = ErrorReply(code="stale_request", message="x", server_time=self.hub_time)
            self._reply = encode_message(refusal)
        else:
            accepted = ClaimAccepted(
                device_id=DEV, mqtt_username=DEV, mqtt_password="pw", anchors=(ANCHOR,),
                server_time=self.hub_time,
            )  # fmt: skip
            self._reply = encode_message(accepted)

    def receive(self, timeout: float) -> Incoming | None:
        reply, self._reply = self._reply, None
        return Incoming("claim/x/res", reply) if reply is not None else None

    @property
    def is_connected(self) -> bool:
        return True

    def disconnect(self) -> None:
        return None


def test_claim_with_a_wrong_clock_is_retried_with_the_hubs_time(tmp_path: Path) -> None:
    config = parse_config(
        {"device": {"serial": "SN-CLK"}, "claim": {"token": "hubc_x"},
         "agent": {"reconnect_min_seconds": 0.001, "reconnect_max_seconds": 0.002}},
        base=tmp_path,
    )  # fmt: skip
    device_clock = 1_000_000_000  # years behind the hub: no RTC battery
    hub = _ClaimHub(hub_time=1_800_000_000)
    runner = AgentRunner(config, transport_factory=hub, clock=lambda: float(device_clock))
    identity = runner._claim_until_done()
    assert identity is not None and identity.device_id == DEV
    first, second = hub.claims
    assert first.ts == device_clock
    assert second.ts == hub.hub_time  # corrected by the refusal's server_time


def test_runner_gives_the_application_a_meter_only_when_metering_is_configured(
    tmp_path: Path,
) -> None:
    base = {"device": {"serial": "SN-M"}, "claim": {"token": "hubc_x"}}
    without = AgentRunner(parse_config(base, base=tmp_path / "a"))
    with pytest.raises(ConfigError, match="metering"):
        without.meter()
    runner = AgentRunner(parse_config({**base, "metering": {}}, base=tmp_path / "b"))
    # Configured, but nothing to meter against before the device has claimed.
    with pytest.raises(StateError, match="not claimed"):
        runner.meter()
