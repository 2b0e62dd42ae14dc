"""An unanswered hello is sent again until the hub's ``state`` answers it.

The hub may connect to the broker after the device (a hub restart with a
managed broker): the first hello then reaches no subscriber.
"""

from device_agent.session import HELLO_RETRY_MAX_SECONDS, DeviceSession
from protocols.messages import Hello, State, decode_as, encode_message
from tests.device_agent.test_trust import DEV, T0
from tests.device_agent.test_trust_store import IDENTITY, open_store

HELLO_TOPIC = f"d/{DEV}/up/hello"


def _hellos(out: list) -> list[Hello]:
    return [decode_as(Hello, o.payload) for o in out if o.topic == HELLO_TOPIC]


def _answer(session: DeviceSession, now: int) -> None:
    state = State(device_id=DEV, server_time=now, manifest_seq=0)
    session.on_message(f"d/{DEV}/down/state", encode_message(state), now=now)


def test_hello_is_resent_with_doubling_waits_until_answered(tmp_path):
    session = DeviceSession(IDENTITY, agent_version="1", boot_epoch=7, trust=open_store(tmp_path))
    assert len(_hellos(session.on_connected(now=T0))) == 1
    resent_at = [t for t in range(T0, T0 + 200) if _hellos(session.tick(now=t))]
    assert resent_at[:5] == [T0 + 5, T0 + 15, T0 + 35, T0 + 75, T0 + 75 + HELLO_RETRY_MAX_SECONDS]
    [again] = _hellos(session.tick(now=T0 + 400))
    assert again.boot_epoch == 7
    _answer(session, T0 + 401)
    assert not any(_hellos(session.tick(now=t)) for t in range(T0 + 401, T0 + 1000))


def test_a_new_connection_starts_the_waits_afresh(tmp_path):
    session = DeviceSession(IDENTITY, agent_version="1", boot_epoch=1, trust=open_store(tmp_path))
    session.on_connected(now=T0)
    _answer(session, T0 + 1)
    assert not _hellos(session.tick(now=T0 + 100))
    session.on_connected(now=T0 + 200)  # reconnected: this hello is unanswered
    assert not _hellos(session.tick(now=T0 + 204))
    assert len(_hellos(session.tick(now=T0 + 205))) == 1


def test_a_state_for_another_device_does_not_count_as_an_answer(tmp_path):
    session = DeviceSession(IDENTITY, agent_version="1", boot_epoch=1, trust=open_store(tmp_path))
    session.on_connected(now=T0)
    other = State(device_id="dev-" + "0" * 20, server_time=T0, manifest_seq=0)
    session.on_message(f"d/{DEV}/down/state", encode_message(other), now=T0)
    assert len(_hellos(session.tick(now=T0 + 5))) == 1
