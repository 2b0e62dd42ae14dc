"""The pull window of a chunked download: pure bookkeeping, time passed in as ``now``.

The device pulls (the hub keeps no per-device download state): it asks for at
most ``in_flight`` chunks ahead of the first one not yet written (``base``),
in requests of at most ``request_size`` (≤ 16) consecutive chunks. Chunks
arrive in any order; verified ones wait in memory until they extend the
contiguous run from ``base``, which the installer then writes. Nothing outside
the window is kept, so memory stays bounded by ``in_flight`` chunks.

Skipped requests: the hub answers a device's requests in the order they
came; it holds those over its per-call byte budget for its next call, but may
still leave one unanswered (a hub restart loses the held ones). So
when a chunk arrives that was asked for in a *later* request than chunks
still missing, those are taken as lost and asked for again at once, instead
of after the timeout (a reordering hub only causes duplicates, which are
dropped).

Timeouts: when requests are outstanding and nothing new arrives in time (a
*stall*), the oldest outstanding request is asked again, as TCP retransmits
its oldest segment: if the hub was only slow, only that probe's chunks come
twice, not the whole window's; if the hub lost the requests, each further
timeout asks again for the next oldest (the requests still outstanding get a
new deadline, and the re-ask is not held back as a short run at the front,
so a window whose requests were all lost keeps asking once per timeout).
Only the re-ask is a probe: a chunk answering it may be the
first request's, so it neither counts earlier requests as skipped nor
measures a round trip. Progress resets the stall count, and more than
``max_stalls`` stalls in a row mean the download is given up. The timeout is
``timeout``, stretched to ``RTO_FACTOR`` times the smoothed round trip of
the requests (from a request to the first chunk that answers it) when that
is longer, at most ``MAX_STRETCH`` times ``timeout``: a hub that holds
requests queued behind other devices' is slow, not lossy, and asking again
before its queue comes round only makes it send the chunks twice. A stall
itself does not back off: a request the hub lost is only recovered by asking
again. After a reconnect everything
missing is requested again at once, starting from ``base``: that is the
resume from the last verified chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.firmware_messages import MAX_CHUNK_WINDOW

RTO_FACTOR = 3.0
"""The timeout in force is at least this many smoothed round trips..."""
MAX_STRETCH = 4.0
"""...and at most this many times the configured ``timeout``."""


@dataclass
class ChunkWindow:
    """Which chunks to request next, which arrived, when to give up.

    Attributes:
        chunk_count: Chunks in the image.
        base: The first chunk not yet handed to the writer.
        in_flight: Most chunks requested or buffered ahead of ``base``.
        request_size: Most chunks per request (1..16).
        timeout: Seconds without a new chunk before outstanding requests are repeated.
        max_stalls: Consecutive timeouts tolerated before :meth:`expire` gives up.
        bad_chunks: Chunks refused on arrival so far (corrupt, wrong size).
        stalls: Consecutive timeouts without progress.
        lost: Chunks asked for again because a later request was answered first.
        srtt: Smoothed round trip of the requests (seconds), ``None`` before the first.
    """

    chunk_count: int
    base: int = 0
    in_flight: int = 32
    request_size: int = MAX_CHUNK_WINDOW
    timeout: float = 10
    max_stalls: int = 6
    bad_chunks: int = 0
    stalls: int = 0
    lost: int = 0
    srtt: float | None = None
    _buffered: dict[int, bytes] = field(default_factory=dict)
    _requested: dict[int, int] = field(default_factory=dict)  # index -> request serial
    _serial: int = 0
    _sent: dict[int, float] = field(default_factory=dict)  # request serial -> when asked
    _probing: bool = False  # the next plan follows a stall: the front is not held back
    _reask: set[int] = field(default_factory=set)  # chunks the stall gave up on
    _probes: set[int] = field(default_factory=set)  # serials of the requests re-asking them
    _deadline: float | None = None

    def __post_init__(self) -> None:
        """Check the bounds."""
        if not 1 <= self.request_size <= MAX_CHUNK_WINDOW:
            raise ValueError(f"request_size must be 1..{MAX_CHUNK_WINDOW}")
        if self.in_flight < 1 or self.timeout <= 0 or self.max_stalls < 0:
            raise ValueError("in_flight and timeout must be positive, max_stalls not negative")
        if not 0 <= self.base <= self.chunk_count:
            raise ValueError("base is outside the image")

    @property
    def complete(self) -> bool:
        """Every chunk was handed to the writer."""
        return self.base >= self.chunk_count

    @property
    def current_timeout(self) -> float:
        """The timeout in force: ``timeout``, stretched by a long measured round trip."""
        if self.srtt is None:
            return self.timeout
        return min(max(self.timeout, RTO_FACTOR * self.srtt), MAX_STRETCH * self.timeout)

    @property
    def outstanding(self) -> int:
        """Chunks requested and not yet arrived."""
        return len(self._requested)

    def _limit(self) -> int:
        return min(self.base + self.in_flight, self.chunk_count)

    def wants(self, index: int) -> bool:
        """Whether ``index`` is inside the window and not yet here."""
        return self.base <= index < self._limit() and index not in self._buffered

    def plan(self, now: float) -> list[tuple[int, int]]:
        """The requests to send now: ``(index, count)`` runs of missing, unrequested chunks.

        Holes (chunks refused, skipped or timed out behind the newest request)
        are asked for at once; new ground at the front of the window only in
        full requests (``request_size`` chunks, or the rest of the image), so a
        window sliding one chunk at a time does not send one request per chunk.
        """
        frontier = max(
            max(self._requested, default=-1), max(self._buffered, default=-1), self.base - 1
        )
        full = min(self.request_size, self.in_flight)
        # After a stall the re-ask goes out even if it is a short run at the
        # front: held back, nothing else might ever set a deadline again.
        idle = not self._requested or self._probing
        runs: list[tuple[int, int]] = []
        for index, count in self._missing_runs():
            fresh = index > frontier
            if fresh and not idle and count < full and index + count < self.chunk_count:
                continue
            runs.append((index, count))
        for index, count in runs:
            self._serial += 1
            self._requested.update(dict.fromkeys(range(index, index + count), self._serial))
            if self._reask.intersection(range(index, index + count)):
                self._probes.add(self._serial)  # its answer may be the lost request's
            else:
                self._sent[self._serial] = now
        # One plan only: later requests are ordinary (they measure round trips).
        self._probing = False
        self._reask.clear()
        if runs and self._deadline is None:
            self._deadline = now + self.current_timeout
        return runs

    def _missing_runs(self) -> list[tuple[int, int]]:
        """Runs of at most ``request_size`` chunks neither here nor asked for, in the window."""
        runs: list[tuple[int, int]] = []
        start: int | None = None
        for index in range(self.base, self._limit()):
            missing = index not in self._buffered and index not in self._requested
            if missing and start is not None and index - start < self.request_size:
                continue
            if start is not None:
                runs.append((start, index - start))
                start = None
            if missing:
                start = index
        if start is not None:
            runs.append((start, self._limit() - start))
        return runs

    def accept(self, index: int, data: bytes, now: float) -> bool:
        """Keep a *verified* chunk if the window wants it.

        Returns:
            ``True`` for a new chunk; ``False`` for a duplicate or one outside
            the window (dropped: nothing outside the window is kept).
        """
        serial = self._requested.pop(index, None)
        if serial is not None and serial not in self._probes:
            sent = self._sent.pop(serial, None)  # the first chunk answering that request
            if sent is not None:
                self._sample(now - sent)
            self._forget_earlier(serial)
        if not self.wants(index):
            return False
        self._buffered[index] = data
        self.stalls = 0
        self._deadline = now + self.current_timeout if self._requested else None
        return True

    def _sample(self, rtt: float) -> None:
        """Fold one measured round trip into :attr:`srtt` (weight 1/8, as TCP does)."""
        if rtt < 0:
            return  # a clock that stepped back measures nothing
        self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt

    def _forget_earlier(self, serial: int) -> None:
        """Chunks of requests older than ``serial`` still missing were skipped: ask again."""
        skipped = [index for index, asked in self._requested.items() if asked < serial]
        for index in skipped:
            del self._requested[index]
        self.lost += len(skipped)
        for older in [s for s in self._sent if s < serial]:
            del self._sent[older]
        self._probes = {s for s in self._probes if s > serial}

    def refused(self, index: int) -> None:
        """A chunk was refused on arrival: ask for it again with the next plan."""
        self.bad_chunks += 1
        self._requested.pop(index, None)

    def ready(self) -> int:
        """Verified chunks contiguous from ``base``, ready to be written."""
        count = 0
        while self.base + count in self._buffered:
            count += 1
        return count

    def take(self) -> list[bytes]:
        """Hand the contiguous verified chunks from ``base`` to the writer and move on."""
        chunks = []
        while self.base in self._buffered:
            chunks.append(self._buffered.pop(self.base))
            self.base += 1
        return chunks

    def resync(self, base: int) -> None:
        """Align with the persisted progress (after a restart or a failed write)."""
        if not 0 <= base <= self.chunk_count:
            raise ValueError("base is outside the image")
        if base < self.base:
            self._requested.clear()  # what was handed over and lost must be asked again
            self._sent.clear()
            self._probes.clear()
        self.base = base
        self._buffered = {i: d for i, d in self._buffered.items() if i >= base}

    def restart(self) -> None:
        """Forget outstanding requests (after a reconnect): the next plan asks again."""
        self._requested.clear()
        self._sent.clear()
        self._probes.clear()
        self._reask.clear()
        self._deadline = None

    def expire(self, now: float) -> bool:
        """Count a stall if outstanding requests timed out; ``True`` once too many.

        After a stall the oldest outstanding request is forgotten, so the next
        :meth:`plan` asks for it again (the probe; see the module docstring),
        and the remaining outstanding requests get a new deadline.
        """
        if self._deadline is None or now < self._deadline:
            return False
        self.stalls += 1
        if self._requested:
            oldest = min(self._requested.values())
            for index in [i for i, asked in self._requested.items() if asked == oldest]:
                del self._requested[index]
                self._reask.add(index)
            self._sent.pop(oldest, None)
        # Requests still outstanding keep a deadline of their own: without one a
        # plan that asks nothing new would leave the download waiting forever.
        self._deadline = now + self.current_timeout if self._requested else None
        self._probing = True
        return self.stalls > self.max_stalls


__all__ = ["ChunkWindow"]
