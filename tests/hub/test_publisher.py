"""The publisher issues large changes in committed, published chunks."""

from __future__ import annotations

from datetime import timedelta

from hub.manifests import publisher as publisher_module
from hub.manifests.models import DeviceManifest
from hub.manifests.publisher import ManifestPublisher
from tests.hub.fleet import MANIFEST_POLICY, Fleet


def test_large_changes_go_out_in_chunks_each_committed_before_publishing(
    session_factory, clock, monkeypatch
):
    fleet = Fleet.create(session_factory, clock.now)
    devices = [fleet.claimed_device(f"PUB-{i}")[0] for i in range(5)]
    monkeypatch.setattr(publisher_module, "FANOUT_CHUNK", 2)
    published: list[list[str]] = []

    def publish(out):
        # Everything published must already be committed (visible to a new session).
        with session_factory() as s:
            for message in out:
                assert s.get(DeviceManifest, message.track) is not None
        published.append([m.track for m in out])

    ManifestPublisher(
        session_factory=session_factory,
        policy=MANIFEST_POLICY,
        clock=clock,
        publish=publish,
        seat_timeout=timedelta(seconds=60),
    ).devices_changed(devices)
    assert [len(chunk) for chunk in published] == [2, 2, 1]
    assert sorted(t for chunk in published for t in chunk) == sorted(devices)
