"""One simulator run: start or reach a hub, provision, run the fleet, inject faults, check.

Phases, in order (each shown by the progress bar):

1. **hub**: start ``hub serve`` (or use a remote one) and bootstrap a tenant;
2. **provision**: device class, devices, claim tokens, product, entitlements
   (and the "firmware care" product gated firmware requires);
3. **online**: every device claims its identity and connects (paced, with
   source addresses spread over ``127.0.0.x``); connects per second and
   memory per device are measured here;
4. **entitle**: each group's entitlement is activated on its devices;
5. **run**: ``duration`` seconds of behaviour, faults, operator actions,
   attacks and the scenario's firmware rollout (:mod:`simulator.rollout`),
   all on one event loop;
6. **settle**: faults end, every device stays online; wait until manifests
   and usage are quiet and converged and the rollout is final (at most
   ``settle_seconds``);
7. **check**: devices stop, each one's running image is hashed, the hub's
   account is fetched, invariants checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.firmware.processor import firmware_keys
from simulator import components as parts
from simulator import environment, hubstate, malicious, provision
from simulator import rollout as rollouts
from simulator.checker import CheckResult, RunFacts, check
from simulator.device import ConnectGate, DeviceSpec, Endpoints, SimDevice
from simulator.environment import Environment
from simulator.fwcheck import ACTIVE_JOB_STATES, FINAL_ROLLOUT_STATES
from simulator.hubapi import HubApi, HubApiError
from simulator.proxy import StallProxy
from simulator.recorder import FirmwareScope, Recorder
from simulator.scenario import Fault, Group, Scenario

log = logging.getLogger(__name__)

Progress = Callable[[str, float, float, str], None]
"""``progress(phase, done, total, info)``."""

Inspect = Callable[["HubApi", "provision.Fleet", "list[SimDevice]"], Awaitable[None]]
"""A hook of the demo: ``before_run`` (entitlements active, the run about to start)
or ``inspect`` (the fleet settled, the devices not yet stopped)."""


def _quiet(_phase: str, _done: float, _total: float, _info: str) -> None:
    return None


@dataclass
class RunOptions:
    """How to run a scenario (the command line's options)."""

    broker: str = "embedded"
    database_url: str | None = None
    work_dir: Path | None = None
    keep_work_dir: bool = False
    remote: Environment | None = None
    progress: Progress = _quiet
    inspect: Inspect | None = None
    before_run: Inspect | None = None


@dataclass
class RunStats:
    """Measured figures beside the invariants."""

    claim_seconds: float = 0.0
    claims_per_second: float = 0.0
    online_seconds: float = 0.0
    connects_per_second: float = 0.0
    rss_before_mib: float = 0.0
    rss_online_mib: float = 0.0
    memory_per_device_kib: float = 0.0
    settle_seconds: float = 0.0
    converged_in_settle: bool = False
    faults: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] = field(default_factory=dict)
    api_calls: int = 0
    api_server_errors: int = 0
    wall_seconds: float = 0.0


@dataclass
class RunOutcome:
    """Everything a report is made of."""

    scenario: Scenario
    environment: str
    result: CheckResult
    stats: RunStats
    recorder: Recorder
    hub_exit_status: int | None = None


def rss_mib() -> float:
    """This process's resident memory (Linux ``/proc``), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def run(scenario: Scenario, options: RunOptions) -> RunOutcome:
    """Run ``scenario`` end to end; see the module docstring."""
    started = time.monotonic()
    owned = options.work_dir is None
    root = Path(tempfile.mkdtemp(prefix="fleet-sim-")) if owned else options.work_dir
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    devices_root = _device_root(root, owned)
    progress = options.progress
    progress("hub", 0, 1, f"starting a hub ({options.broker})")
    env = options.remote
    if env is None:
        env = await asyncio.to_thread(
            environment.start,
            broker=options.broker,
            data_dir=root,
            options=scenario.hub,
            database_url=options.database_url,
        )
    progress("hub", 1, 1, env.api_url)
    status: int | None = None
    try:
        outcome = await _Run(scenario, env, devices_root, progress, options).go()
    finally:
        if options.remote is None:
            status = await asyncio.to_thread(env.stop)
        if owned and not options.keep_work_dir:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(devices_root, ignore_errors=True)
    outcome.hub_exit_status = status
    outcome.stats.wall_seconds = time.monotonic() - started
    return outcome


def _device_root(root: Path, owned: bool) -> Path:
    """Where device state goes: tmpfs when the work directory is ours.

    Every agent write is fsync'd (that is the agent's durability promise), and
    on one event loop a slow disk's fsync stalls every device at once; on
    tmpfs the same code runs without the disk in the measurement.
    """
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp below, removed at the end
    if owned and shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="fleet-sim-devices-", dir=shm))
    return root / "devices"


class _Run:
    def __init__(
        self,
        scenario: Scenario,
        env: Environment,
        root: Path,
        progress: Progress,
        options: RunOptions,
    ) -> None:
        self.scenario, self.env, self.root, self.progress = scenario, env, root, progress
        self.inspect, self.before_run = options.inspect, options.before_run
        self.rng = random.Random(scenario.seed)  # noqa: S311 - simulation, not crypto
        self.recorder = Recorder()
        self.stats = RunStats()
        self.api = HubApi(env.api_url, env.api_key)
        self.devices: list[SimDevice] = []
        self.proxies: dict[str, StallProxy] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.t0 = time.monotonic()
        self.revoked_at: dict[str, float] = {}
        self.connect_allowed = asyncio.Event()
        self.fleet: provision.Fleet | None = None
        self.rollout: rollouts.Started | None = None
        self.rollout_error = ""
        # device id -> the hub's manifest sequence the settle check that succeeded saw
        self.settled_seqs: dict[str, int] = {}
        self.hub_problems: list[str] = []  # a hub that would not stop on SIGTERM, ...

    async def go(self) -> RunOutcome:
        try:
            fleet = await self._provision()
            await self._bring_online(fleet)
            await self._entitle(fleet)
            if self.before_run is not None:
                await self.before_run(self.api, fleet, self.devices)
            # every device claimed: offers' envelopes can be verified as they arrive
            self.recorder.firmware_scope = self._firmware_scope()
            await self._run_phase(fleet)
            await self._settle()
            if self.inspect is not None:
                await self.inspect(self.api, fleet, self.devices)
            result = await self._finish()
        finally:
            await self._teardown()
        self.stats.api_calls = self.api.calls
        self.stats.api_server_errors = self.api.server_errors
        return RunOutcome(self.scenario, self.env.kind, result, self.stats, self.recorder)

    # ------------------------------------------------------------ phases

    async def _provision(self) -> provision.Fleet:
        self.progress("provision", 0, 2, "devices and claim tokens")
        fleet = await provision.register(self.api, self.scenario)
        self.fleet = fleet
        self.progress("provision", 1, 2, "product, account, entitlements")
        await provision.sell(self.api, self.scenario, fleet)
        self.progress("provision", 2, 2, f"{len(fleet.device_ids)} devices registered")
        return fleet

    async def _bring_online(self, fleet: provision.Fleet) -> None:
        for group in self.scenario.groups:
            if group.through_proxy:
                proxy = StallProxy(self.env.host, self.env.port)
                await proxy.start()
                self.proxies[group.name] = proxy
        gate = ConnectGate(self.scenario.connects_per_second)
        claim_gate = ConnectGate(self.scenario.claims_per_second, self.scenario.claims_in_flight)
        n_addr = self.scenario.source_addresses
        for index, (serial, group) in enumerate(self._serials(fleet)):
            relay = self.proxies.get(group.name)
            endpoints = Endpoints(
                host="127.0.0.1" if relay else self.env.host,
                port=relay.port if relay else self.env.port,
                claim_host=self.env.claim_host,
                claim_port=self.env.claim_port,
            )
            spec = DeviceSpec(
                serial=serial,
                group=group,
                state_dir=self.root / serial,
                endpoints=endpoints,
                bind_address=f"127.0.0.{1 + index % n_addr}",
                keepalive=self.scenario.keepalive_seconds,
                heartbeat_seconds=self.scenario.heartbeat_seconds,
                token=fleet.tokens.get(group.name),
                key=fleet.keys.get(serial),
                sections=self._sections(fleet, group),
            )
            record = self.recorder.add(
                serial, group.name, group.clock_skew_seconds, group.malicious
            )
            record.firmware_entitled = self._firmware_entitled(group)
            rng = random.Random(self.rng.getrandbits(64))  # noqa: S311
            self.devices.append(
                SimDevice(
                    spec,
                    recorder=self.recorder,
                    gate=gate,
                    rng=rng,
                    run_start=lambda: self.t0,
                    connect_allowed=self.connect_allowed,
                    claim_gate=claim_gate,
                )
            )
        self.stats.rss_before_mib = rss_mib()
        for device in self.devices:
            self._spawn(device.run())
        total = len(self.devices)
        slack = 120.0  # give up on a phase after this long without progress
        claimed, took = await self._wait_for(
            "claim", lambda: sum(1 for d in self.devices if d.device_id), total, slack
        )
        self.stats.claim_seconds = took
        self.stats.claims_per_second = claimed / took if took > 0 else 0.0
        self.connect_allowed.set()
        online, took = await self._wait_for(
            "online", lambda: sum(1 for d in self.devices if d.online), total, slack
        )
        self.stats.online_seconds = took
        self.stats.connects_per_second = online / took if took > 0 else 0.0
        self.stats.rss_online_mib = rss_mib()
        grown = self.stats.rss_online_mib - self.stats.rss_before_mib
        self.stats.memory_per_device_kib = grown * 1024 / max(1, total)
        self.recorder.event(
            0.0,
            f"{claimed}/{total} claimed in {self.stats.claim_seconds:.1f}s,"
            f" {online}/{total} online in {took:.1f}s",
        )

    async def _wait_for(
        self, phase: str, count: Callable[[], int], total: int, patience: float
    ) -> tuple[int, float]:
        """Wait until ``count()`` reaches ``total``, or makes no progress for ``patience`` s."""
        started = last_change = time.monotonic()
        last = -1
        while True:
            done = count()
            if done != last:
                last, last_change = done, time.monotonic()
            self.progress(phase, done, total, f"{done}/{total}")
            if done == total or time.monotonic() - last_change > patience:
                return done, time.monotonic() - started
            await asyncio.sleep(0.1)

    def _sections(self, fleet: provision.Fleet, group: Any) -> dict[str, dict[str, Any]]:
        """The agent config tables of the components (real agents read them from TOML)."""
        sections: dict[str, dict[str, Any]] = {}
        if self.scenario.metering:
            sections["metering"] = {"flush_seconds": 1, "retry_seconds": 5}
        if self.scenario.firmware:
            sections["firmware"] = {
                "vendor_id": fleet.vendor_uuid,
                "class_id": fleet.class_uuid,
                "health_check": "fail" if group.firmware_failure else "pass",
            }
        return sections

    def _firmware_entitled(self, group: Group) -> bool:
        """Whether the group may have the run's firmware (its gate's entitlement is active)."""
        plan = self.scenario.rollout
        if plan is None or not plan.gated:
            return True
        return bool(self.scenario.entitle and group.firmware_entitled)

    def _serials(self, fleet: provision.Fleet) -> list[tuple[str, Any]]:
        pairs = [(s, g) for g in self.scenario.groups for s in fleet.groups[g.name]]
        self.rng.shuffle(pairs)  # groups interleave on the way online
        return pairs

    async def _entitle(self, fleet: provision.Fleet) -> None:
        groups = self.scenario.groups if self.scenario.entitle else ()
        for i, group in enumerate(groups):
            self.progress("entitle", i, len(groups), f"activating {group.name}")
            await provision.activate(self.api, fleet, group.name)
        done = len(groups) or 1
        self.progress("entitle", done, done, "entitlements active" if groups else "none (scenario)")

    async def _run_phase(self, fleet: provision.Fleet) -> None:
        scenario = self.scenario
        self.t0 = time.monotonic()
        for device in self.devices:
            device.in_run = True
        self._plan_attacks()
        for fault in scenario.faults:
            self._spawn(self._at(fault.at, self._fault(fault)))
        for action in scenario.actions:
            self._spawn(self._at(action.at, self._action(fleet, action.kind, action.group)))
        if scenario.rollout is not None:
            self._spawn(self._at(scenario.rollout.at, self._start_rollout(fleet)))
        self._spawn(self._ticker())
        while (elapsed := time.monotonic() - self.t0) < scenario.duration_seconds:
            online = sum(1 for d in self.devices if d.online)
            self.progress("run", elapsed, scenario.duration_seconds, f"{online} online")
            await asyncio.sleep(0.5)
        self.progress("run", scenario.duration_seconds, scenario.duration_seconds, "done")

    async def _settle(self) -> None:
        for device in self.devices:
            device.settling = True
        for proxy in self.proxies.values():
            proxy.resume()
        started = time.monotonic()
        limit = self.scenario.settle_seconds
        quiet_since = time.monotonic()
        last = self._fingerprint()
        while (elapsed := time.monotonic() - started) < limit:
            online = sum(1 for d in self.devices if d.online)
            self.progress("settle", elapsed, limit, f"{online}/{len(self.devices)} online")
            await asyncio.sleep(1.0)
            now = self._fingerprint()
            if now != last:
                last, quiet_since = now, time.monotonic()
            if online == len(self.devices) and time.monotonic() - quiet_since >= 5.0:
                left = max(1.0, limit - (time.monotonic() - started))
                try:
                    seen = await asyncio.wait_for(self._converged(), left)
                except TimeoutError:
                    break
                if seen is not None:
                    self.stats.converged_in_settle = True
                    self.settled_seqs = seen
                    break
                quiet_since = time.monotonic()
        self.stats.settle_seconds = time.monotonic() - started
        self.progress(
            "settle", limit, limit, "settled" if self.stats.converged_in_settle else "timed out"
        )

    def _fingerprint(self) -> tuple[int, ...]:
        records = self.recorder.devices.values()
        return (
            sum(r.manifest_seq for r in records),
            sum(len(r.usage_acks) for r in records),
            sum(len(r.usage_sent) for r in records),
            sum(1 for d in self.devices if d.online),
        )

    async def _converged(self) -> dict[str, int] | None:
        """The hub's sequences if manifests equal them, usage is answered, the rollout finished.

        ``None`` when not converged yet.
        """
        records = self.recorder.devices.values()
        hub_acks_usage = any(r.usage_acks for r in records)
        if hub_acks_usage and any(set(r.usage_sent) - set(r.usage_acks) for r in records):
            return None
        if not await self._rollout_finished():
            return None
        hub = await hubstate.fetch(self.api, [d.device_id for d in self.devices if d.device_id])
        seqs = {d: device.manifest_seq or 0 for d, device in hub.devices.items()}
        converged = all(
            seqs[d.device_id] == d.record.manifest_seq for d in self.devices if d.device_id in seqs
        )
        return seqs if converged and len(seqs) == len(self.devices) else None

    async def _rollout_finished(self) -> bool:
        """No rollout planned, or it is in a final state with no job still active."""
        if self.scenario.rollout is None or self.rollout_error:
            return True
        if self.rollout is None:
            return False  # not started yet
        try:
            state = await self.api.get(
                f"/firmware/rollouts/{self.rollout.rollout_id}", retry_for=10.0
            )
        except HubApiError as exc:
            log.warning("rollout progress unavailable: %s", exc)
            return False  # asked again on the next settle check
        active = sum(n for job, n in state["counts"].items() if job in ACTIVE_JOB_STATES)
        return state["state"] in FINAL_ROLLOUT_STATES and active == 0

    async def _start_rollout(self, fleet: provision.Fleet) -> None:
        plan = self.scenario.rollout
        assert plan is not None
        at = round(time.monotonic() - self.t0, 2)
        payload = rollouts.image(plan, self.scenario.seed, fleet.class_uuid)
        try:
            self.rollout = await rollouts.start(self.api, fleet, plan, payload)
        except Exception as exc:  # any failure here is a finding, never only a log line
            log.exception("the rollout could not be started")
            self.rollout_error = f"{type(exc).__name__}: {exc}"
            self.stats.rollout = {"at": at, "error": self.rollout_error}
            self.recorder.event(at, f"rollout not started: {exc}")
            return
        self.stats.rollout = {
            "at": at,
            "package_id": self.rollout.package_id,
            "rollout_id": self.rollout.rollout_id,
            "image_bytes": len(payload),
            "gated": plan.gated,
            "waves": list(plan.waves),
            "target_count": self.rollout.target_count,
            "skipped": self.rollout.skipped,
        }
        self.recorder.event(
            at, f"rollout started: {self.rollout.target_count} devices in {len(plan.waves)} waves"
        )

    def _firmware_scope(self) -> FirmwareScope | None:
        """The run's class and the hub's firmware anchor (from a device's trust store)."""
        fleet = self.fleet
        trusted = next(
            (d.session.trust for d in self.devices if d.session and d.session.trust), None
        )
        if fleet is None or trusted is None:
            return None
        return FirmwareScope(
            class_id=fleet.class_id,
            vendor_uuid=fleet.vendor_uuid,
            class_uuid=fleet.class_uuid,
            keys=firmware_keys(trusted.state),
        )

    async def _finish(self) -> CheckResult:
        self.progress("check", 0, 2, "stopping devices")
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)
        for d in self.devices:
            if d.session is not None:
                d.record.usage_buffered_at_end = parts.buffered(d.session.components)
            d.record_firmware()
        self.progress("check", 1, 2, "fetching the hub's account")
        hub = await hubstate.fetch(
            self.api, [d.device_id for d in self.devices if d.device_id], self._firmware_scope()
        )
        facts = RunFacts(
            lease_seconds=self.scenario.hub.manifest_lease_seconds,
            revoked_at=self.revoked_at,
            metering_available=any(d.meter is not None for d in self.devices),
            firmware_available=any(d.firmware is not None for d in self.devices),
            rollout_planned=self.scenario.rollout is not None,
            rollout_started=self.rollout is not None,
            rollout_error=self.rollout_error,
            settled_seqs=self.settled_seqs,
            hub_problems=tuple(self.hub_problems),
        )
        result = check(self.recorder.devices, hub, facts)
        self.progress("check", 2, 2, f"{len(result.violations)} violation(s)")
        return result

    async def _teardown(self) -> None:
        for device in self.devices:
            device.stopping = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for proxy in self.proxies.values():
            await proxy.stop()
        for device in self.devices:
            if device.session is not None:
                parts.close(device.session.components)
        await self.api.close()

    # ------------------------------------------------------------ helpers

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed: %r", task.exception(), exc_info=task.exception())

    async def _at(self, at: float, coro: Any) -> None:
        await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
        await coro

    async def _ticker(self) -> None:
        step = self.scenario.tick_seconds
        last = time.monotonic()
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            dt, last = now - last, now
            for device in self.devices:
                out = device.tick(dt)
                if out:
                    self._spawn(device.send(out))
                if device.pending_attacks and device.attack_at <= now and not device.settling:
                    self._attack(device)

    def _plan_attacks(self) -> None:
        duration = self.scenario.duration_seconds
        for device in self.devices:
            if device.group.malicious:
                device.attack_at = self.t0 + self.rng.uniform(0.4, 0.7) * duration
                device.pending_attacks = malicious.planned(device.group.malicious)

    def _attack(self, device: SimDevice) -> None:
        if device.attacking or not device.online:
            return
        device.attacking = True

        async def go() -> None:
            try:
                await malicious.attack(device, self._victim(device))
            finally:
                device.attacking = False

        self._spawn(go())

    def _victim(self, attacker: SimDevice) -> str | None:
        honest = [d.device_id for d in self.devices if not d.group.malicious and d.device_id]
        return self.rng.choice(honest) if honest else None

    async def _fault(self, fault: Fault) -> None:
        reason = self.env.unsupported(fault.kind)
        entry: dict[str, Any] = {"at": fault.at, "kind": fault.kind}
        if reason is not None:
            entry["skipped"] = reason
            self.stats.faults.append(entry)
            self.recorder.event(fault.at, f"{fault.kind} skipped: {reason}")
            return
        started = time.monotonic()
        if fault.kind == "hub_kill":
            await self.env.hub_kill(fault.down_seconds)
        elif fault.kind == "broker_restart":
            problem = await self.env.broker_restart(fault.down_seconds)
            if problem is not None:
                entry["problem"] = problem
                self.hub_problems.append(f"broker_restart @{fault.at:g}s: {problem}")
        elif fault.kind == "agent_crash":
            victims = self.rng.sample(
                self.devices, max(1, round(fault.fraction * len(self.devices)))
            )
            for device in victims:
                device.crash()
            entry["devices"] = len(victims)
        elif fault.kind == "network_stall":
            await self._stall(fault)
        entry["took_seconds"] = round(time.monotonic() - started, 2)
        self.stats.faults.append(entry)
        self.recorder.event(fault.at, f"{fault.kind} done in {entry['took_seconds']}s")

    async def _stall(self, fault: Fault) -> None:
        if fault.group:
            proxy = self.proxies[fault.group]
            proxy.stall()
            try:
                await asyncio.sleep(fault.down_seconds)
            finally:
                proxy.resume()
        else:
            await self.env.broker_stall(fault.down_seconds)

    async def _action(self, fleet: provision.Fleet, kind: str, group: str) -> None:
        entry: dict[str, Any] = {"at": round(time.monotonic() - self.t0, 2), "kind": kind}
        if kind == "feature_change":
            entry["max_users"] = await provision.change_limit(self.api, fleet)
        elif kind == "revoke_group":
            self.revoked_at[group] = time.time()
            await provision.revoke(self.api, fleet, group)
            entry["group"] = group
        self.stats.actions.append(entry)
        self.recorder.event(entry["at"], f"action {kind} {group}".strip())
