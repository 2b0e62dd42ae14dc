"""A real process killed with SIGKILL while recording: no key reused, nothing committed lost."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.device_agent.metering.harness import T0, open_buffer

ROOT = Path(__file__).resolve().parents[3]

# Records in a tight loop, acknowledging (deleting) every third record; prints
# each key after its transaction committed, so the parent knows what must survive.
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from device_agent.metering.buffer import BUFFER_FILE, UsageBuffer
    from protocols.usage_messages import AckResult

    buffer = UsageBuffer.open(Path(sys.argv[1]) / BUFFER_FILE)
    buffer.begin_epoch(int(sys.argv[2]))
    while True:
        key = buffer.append("api_calls", 1, ts=T0_VALUE).record.key
        print("R", *key, flush=True)
        if key[1] % 3 == 0:
            buffer.acknowledge([AckResult(key[0], key[1] - 1, "stored")])
            print("A", key[0], key[1] - 1, flush=True)
    """
).replace("T0_VALUE", str(T0))


def _run_and_kill(state_dir: Path, epoch: int, records: int) -> tuple[set, set]:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state_dir), str(epoch)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    recorded, acked = set(), set()
    assert child.stdout is not None
    try:
        for line in child.stdout:
            kind, e, s = line.split()
            (recorded if kind == "R" else acked).add((int(e), int(s)))
            if len(recorded) >= records:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return recorded, acked


@pytest.mark.timeout(120)
def test_sigkill_while_recording_loses_nothing_committed_and_reuses_no_key(tmp_path):
    all_recorded: set = set()
    all_acked: set = set()  # acks the parent saw before the kill
    seen_pending: set = set()
    # Two runs in one boot epoch (a crashed agent whose boot counter was not
    # advanced, e.g. an application process), then one in the next epoch.
    for epoch in (1, 1, 2):
        recorded, acked = _run_and_kill(tmp_path, epoch, records=300)
        assert not recorded & all_recorded, "a key was minted twice"
        all_recorded |= recorded
        all_acked |= acked
        buffer = open_buffer(tmp_path)
        pending = {record.key for record in buffer.pending(limit=10_000)}
        stats = buffer.stats()
        buffer.close()
        # Every committed record is still there unless the writer acknowledged
        # it, which it does to (e, s) only after committing (e, s + 1) with
        # s + 1 divisible by 3 (that ack may land after the last line we read).
        for e, s in all_recorded - pending:
            assert (s + 1) % 3 == 0 and (e, s + 1) in all_recorded | pending, (e, s)
        assert not all_acked & pending
        assert len(pending) == stats.pending
        # Minted keys of this epoch are exactly 1..last_seq: no gap, none lost.
        # (The kill may land after a commit but before its line was printed:
        # such a record is pending, never missing.)
        seen_pending |= pending
        minted = {s for e, s in all_recorded | seen_pending if e == epoch}
        assert stats.boot_epoch == epoch
        assert minted == set(range(1, stats.last_seq + 1))
    buffer = open_buffer(tmp_path)
    next_key = buffer.append("api_calls", 1, ts=T0).record.key
    assert next_key not in all_recorded | seen_pending and next_key[0] == 2
