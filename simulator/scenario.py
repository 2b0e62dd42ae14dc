"""Scenarios: which devices to simulate, how they behave, which faults to inject.

A scenario is a TOML file (the shipped ones live in ``simulator/scenarios/``
and run by name). Every value is validated here, so a typo fails before any
hub starts, with the offending key named::

    name = "chaos"
    devices = 200                  # --devices overrides
    duration_seconds = 60          # --duration overrides; faults happen inside it
    settle_seconds = 60            # then: at most this long for everyone to converge

    [hub]                          # settings for a hub the simulator starts itself
    manifest_lease_seconds = 120

    [[groups]]                     # device groups share the fleet by weight
    name = "steady"
    weight = 3
    usage = "steady"               # none | steady | bursty | daily
    connectivity = "always"        # always | flaky | offline

    [[faults]]
    at = 20                        # seconds after the fleet came online
    kind = "hub_kill"              # hub_kill | broker_restart | agent_crash | network_stall
    down_seconds = 3

    [[actions]]                    # operator actions through the REST API
    at = 10
    kind = "feature_change"        # feature_change | revoke_group

    [rollout]                      # upload a gated firmware package, roll it out in waves
    at = 5
    image_kib = 64
    waves = [25, 75]               # percent of the targets per wave

See docs/simulator.md for every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

USAGE_PROFILES = ("none", "steady", "bursty", "daily")
CONNECTIVITY = ("always", "flaky", "offline")
CLAIM_METHODS = ("token", "key")
MALICIOUS = ("replay_manifest", "foreign_usage", "probe_topics", "oversize", "malformed")
FAULT_KINDS = ("hub_kill", "broker_restart", "agent_crash", "network_stall")
ACTION_KINDS = ("feature_change", "revoke_group")
FAILURE_ACTIONS = ("pause", "abort")

UsageProfile = Literal["none", "steady", "bursty", "daily"]
Connectivity = Literal["always", "flaky", "offline"]


class ScenarioError(ValueError):
    """A scenario file is missing, not TOML, or has an invalid value."""


@dataclass(frozen=True, slots=True)
class Group:
    """Devices that behave alike.

    Attributes:
        name: Unique within the scenario; also the device serial prefix.
        weight: Share of the fleet, relative to the other groups' weights.
        claim: ``token`` (a batch claim token) or ``key`` (a pre-registered key).
        usage: The usage profile: how often the device meters its feature.
        usage_rate: Mean metered events per second per device.
        connectivity: ``always`` on, ``flaky`` (drops its connection now and
            then) or ``offline`` for long stretches.
        flaky_mean_up_seconds: Mean time between drops of a flaky device.
        offline_seconds: Length of each offline stretch of an offline device.
        offline_every_seconds: Time from the start of one stretch to the next.
        clock_skew_seconds: Added to the device's clock (negative: behind).
        firmware_failure: The device fails firmware health checks.
        firmware_entitled: The group holds the entitlement a gated firmware
            package requires (``false``: it must never be offered the package).
        malicious: Attacks the device tries (see :data:`MALICIOUS`).
        through_proxy: Connect through the simulator's stall proxy (set
            automatically for groups a ``network_stall`` fault targets).
    """

    name: str
    weight: float = 1.0
    claim: str = "token"
    usage: UsageProfile = "steady"
    usage_rate: float = 0.2
    connectivity: Connectivity = "always"
    flaky_mean_up_seconds: float = 20.0
    offline_seconds: float = 20.0
    offline_every_seconds: float = 45.0
    clock_skew_seconds: int = 0
    firmware_failure: bool = False
    firmware_entitled: bool = True
    malicious: tuple[str, ...] = ()
    through_proxy: bool = False


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault injected at ``at`` seconds into the run.

    Attributes:
        at: Seconds after the fleet is online.
        kind: One of :data:`FAULT_KINDS`.
        down_seconds: How long the hub or broker stays down, or the stall lasts.
        fraction: ``agent_crash``: share of the devices that crash.
        group: ``network_stall``: the group whose connections stall (through
            the stall proxy); empty: the whole broker stalls (SIGSTOP).
    """

    at: float
    kind: str
    down_seconds: float = 2.0
    fraction: float = 0.1
    group: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    """An operator action through the REST API at ``at`` seconds into the run.

    ``feature_change`` raises the product's ``max_users`` limit (every entitled
    device gets a new manifest); ``revoke_group`` revokes the entitlement of
    ``group`` (its devices get manifests without the product's features).
    """

    at: float
    kind: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class HubOptions:
    """Settings for a hub the simulator starts itself (``HUB_*`` variables)."""

    manifest_lease_seconds: int = 3 * 86_400
    manifest_renew_before_seconds: int = 86_400
    presence_stale_seconds: int = 30
    billing_grace_seconds: int | None = None  # None: the hub's default
    billing_job_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A firmware rollout the run starts through the REST API at ``at`` seconds.

    A random image of ``image_kib`` KiB is uploaded for the run's device class
    (gated on the run's firmware-care product when ``gated``), then rolled out
    to the class in ``waves`` (percent of the targets each) with the success
    criterion, failure threshold and device time-out given (docs/firmware.md §6).
    """

    at: float = 3.0
    image_kib: int = 64
    gated: bool = True
    waves: tuple[int, ...] = (25, 75)
    success_percent: int = 80
    failure_percent: int = 50
    failure_min_sample: int = 5
    failure_action: str = "pause"
    device_timeout_seconds: int = 60


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything one simulator run does."""

    name: str
    description: str = ""
    devices: int = 20
    duration_seconds: float = 30.0
    settle_seconds: float = 60.0
    seed: int = 1
    heartbeat_seconds: float = 15.0
    tick_seconds: float = 1.0
    keepalive_seconds: int = 30
    connects_per_second: float = 200.0
    claims_per_second: float = 50.0
    claims_in_flight: int = 50
    source_addresses: int = 16
    metering: bool = True
    firmware: bool = True
    entitle: bool = True
    hub: HubOptions = field(default_factory=HubOptions)
    groups: tuple[Group, ...] = (Group("devices"),)
    faults: tuple[Fault, ...] = ()
    actions: tuple[Action, ...] = ()
    rollout: RolloutPlan | None = None

    def with_overrides(
        self, *, devices: int | None = None, duration: float | None = None
    ) -> Scenario:
        """A copy with the command line's ``--devices`` / ``--duration``.

        Faults and actions scheduled after a shortened duration are dropped; a
        rollout scheduled after it starts with the run instead.
        """
        changed = self
        if devices is not None:
            if devices < 1:
                raise ScenarioError("--devices must be at least 1")
            changed = replace(changed, devices=devices)
        if duration is not None:
            if duration <= 0:
                raise ScenarioError("--duration must be positive")
            rollout = changed.rollout
            if rollout is not None and rollout.at >= duration:
                rollout = replace(rollout, at=0.0)  # still rolled out, at the start
            changed = replace(
                changed,
                duration_seconds=duration,
                faults=tuple(f for f in changed.faults if f.at < duration),
                actions=tuple(a for a in changed.actions if a.at < duration),
                rollout=rollout,
            )
        return changed

    def group_sizes(self) -> dict[str, int]:
        """How many of :attr:`devices` each group gets (every group at least one).

        Raises:
            ScenarioError: fewer devices than groups.
        """
        if self.devices < len(self.groups):
            raise ScenarioError(
                f"{self.devices} devices cannot fill {len(self.groups)} groups: use more"
            )
        total = sum(g.weight for g in self.groups)
        sizes = {g.name: max(1, int(self.devices * g.weight / total)) for g in self.groups}
        # Hand out the remainder (or take back the excess) largest group first.
        order = sorted(self.groups, key=lambda g: -g.weight)
        index = 0
        while sum(sizes.values()) != self.devices:
            name = order[index % len(order)].name
            step = 1 if sum(sizes.values()) < self.devices else -1
            if sizes[name] + step >= 1:
                sizes[name] += step
            index += 1
        return sizes

    def group(self, name: str) -> Group:
        """The group called ``name``."""
        for group in self.groups:
            if group.name == name:
                return group
        raise ScenarioError(f"no group named {name!r}")


# ------------------------------------------------------------------ loading


def shipped() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("simulator") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path.

    Raises:
        ScenarioError: unknown name, unreadable file or invalid content.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    else:
        resource = resources.files("simulator") / "scenarios" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ScenarioError(f"no scenario named {name_or_path!r}; shipped: {shipped()}")
        text = resource.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{name_or_path}: not valid TOML: {exc}") from exc
    return parse(raw)


def parse(raw: Mapping[str, Any]) -> Scenario:
    """Validate a parsed scenario document.

    Raises:
        ScenarioError: naming the first invalid key.
    """
    top = _Table(raw, "scenario")
    groups = tuple(_group(_Table(g, f"groups[{i}]")) for i, g in enumerate(top.tables("groups")))
    if not groups:
        groups = (Group("devices"),)
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ScenarioError(f"group names must be unique: {names}")
    faults = tuple(
        _fault(_Table(f, f"faults[{i}]"), names) for i, f in enumerate(top.tables("faults"))
    )
    actions = tuple(
        _action(_Table(a, f"actions[{i}]"), names) for i, a in enumerate(top.tables("actions"))
    )
    stalled = {f.group for f in faults if f.kind == "network_stall" and f.group}
    groups = tuple(replace(g, through_proxy=g.through_proxy or g.name in stalled) for g in groups)
    hub = _Table(top.table("hub"), "hub")
    scenario = Scenario(
        name=top.text("name", "scenario"),
        description=top.text("description", ""),
        devices=top.integer("devices", 20, 1, 100_000),
        duration_seconds=top.number("duration_seconds", 30.0, 1.0, 86_400.0),
        settle_seconds=top.number("settle_seconds", 60.0, 1.0, 3_600.0),
        seed=top.integer("seed", 1, 0, 2**31),
        heartbeat_seconds=top.number("heartbeat_seconds", 15.0, 1.0, 3_600.0),
        tick_seconds=top.number("tick_seconds", 1.0, 0.1, 60.0),
        keepalive_seconds=top.integer("keepalive_seconds", 30, 5, 3_600),
        connects_per_second=top.number("connects_per_second", 200.0, 1.0, 100_000.0),
        claims_per_second=top.number("claims_per_second", 50.0, 0.1, 100_000.0),
        claims_in_flight=top.integer("claims_in_flight", 50, 1, 100_000),
        source_addresses=top.integer("source_addresses", 16, 1, 250),
        metering=top.boolean("metering", True),
        firmware=top.boolean("firmware", True),
        entitle=top.boolean("entitle", True),
        hub=HubOptions(
            manifest_lease_seconds=hub.integer("manifest_lease_seconds", 3 * 86_400, 60, 10**8),
            manifest_renew_before_seconds=hub.integer(
                "manifest_renew_before_seconds", 86_400, 1, 10**8
            ),
            presence_stale_seconds=hub.integer("presence_stale_seconds", 30, 1, 86_400),
            billing_grace_seconds=hub.optional_integer("billing_grace_seconds", 0, 10**8),
            billing_job_seconds=hub.optional_integer("billing_job_seconds", 1, 10**8),
        ),
        groups=groups,
        faults=tuple(sorted(faults, key=lambda f: f.at)),
        actions=tuple(sorted(actions, key=lambda a: a.at)),
        rollout=_rollout(top.optional_table("rollout")),
    )
    hub.done()
    top.done()
    if scenario.rollout is not None and not scenario.firmware:
        raise ScenarioError("scenario.rollout needs firmware = true (devices to update)")
    return scenario


def _rollout(raw: Mapping[str, Any] | None) -> RolloutPlan | None:
    if raw is None:
        return None
    t = _Table(raw, "rollout")
    waves = t.integers("waves", [25, 75], 1, 100)
    if not waves or sum(waves) > 100:
        raise ScenarioError("rollout.waves: 1 or more percentages adding up to at most 100")
    plan = RolloutPlan(
        at=t.number("at", 3.0, 0.0, 86_400.0),
        image_kib=t.integer("image_kib", 64, 1, 28 * 1024),
        gated=t.boolean("gated", True),
        waves=tuple(waves),
        success_percent=t.integer("success_percent", 80, 1, 100),
        failure_percent=t.integer("failure_percent", 50, 0, 100),
        failure_min_sample=t.integer("failure_min_sample", 5, 1, 100_000),
        failure_action=t.choice("failure_action", "pause", FAILURE_ACTIONS),
        device_timeout_seconds=t.integer("device_timeout_seconds", 60, 30, 30 * 86_400),
    )
    t.done()
    return plan


def _group(t: _Table) -> Group:
    malicious = t.strings("malicious")
    bad = [m for m in malicious if m not in MALICIOUS]
    if bad:
        raise ScenarioError(f"{t.where}.malicious: unknown {bad}; known: {list(MALICIOUS)}")
    group = Group(
        name=t.identifier("name"),
        weight=t.number("weight", 1.0, 0.0001, 1e9),
        claim=t.choice("claim", "token", CLAIM_METHODS),
        usage=t.choice("usage", "steady", USAGE_PROFILES),  # type: ignore[arg-type]
        usage_rate=t.number("usage_rate", 0.2, 0.0, 1000.0),
        connectivity=t.choice("connectivity", "always", CONNECTIVITY),  # type: ignore[arg-type]
        flaky_mean_up_seconds=t.number("flaky_mean_up_seconds", 20.0, 1.0, 86_400.0),
        offline_seconds=t.number("offline_seconds", 20.0, 1.0, 86_400.0),
        offline_every_seconds=t.number("offline_every_seconds", 45.0, 2.0, 86_400.0),
        clock_skew_seconds=t.integer("clock_skew_seconds", 0, -(10**8), 10**8),
        firmware_failure=t.boolean("firmware_failure", False),
        firmware_entitled=t.boolean("firmware_entitled", True),
        malicious=tuple(malicious),
        through_proxy=t.boolean("through_proxy", False),
    )
    if group.offline_seconds >= group.offline_every_seconds:
        raise ScenarioError(f"{t.where}: offline_seconds must be below offline_every_seconds")
    t.done()
    return group


def _fault(t: _Table, groups: list[str]) -> Fault:
    fault = Fault(
        at=t.number("at", None, 0.0, 86_400.0),
        kind=t.choice("kind", None, FAULT_KINDS),
        down_seconds=t.number("down_seconds", 2.0, 0.1, 3_600.0),
        fraction=t.number("fraction", 0.1, 0.0, 1.0),
        group=t.text("group", ""),
    )
    if fault.group and fault.group not in groups:
        raise ScenarioError(f"{t.where}.group: no group named {fault.group!r}")
    if fault.group and fault.kind != "network_stall":
        raise ScenarioError(f"{t.where}.group applies to network_stall only")
    t.done()
    return fault


def _action(t: _Table, groups: list[str]) -> Action:
    action = Action(
        at=t.number("at", None, 0.0, 86_400.0),
        kind=t.choice("kind", None, ACTION_KINDS),
        group=t.text("group", ""),
    )
    if action.kind == "revoke_group" and action.group not in groups:
        raise ScenarioError(f"{t.where}.group: revoke_group needs one of {groups}")
    t.done()
    return action


_MISSING = object()
_ABSENT = object()  # a default meaning "not given" (None means "required" to _get)


class _Table:
    """Typed reads from one TOML table that remember which keys were used."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise ScenarioError(f"{where} must be a table")
        self.raw, self.where, self.used = raw, where, set[str]()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        value = self.raw.get(key, _MISSING)
        if value is _MISSING:
            if default is None:
                raise ScenarioError(f"{self.where}.{key} is required")
            return default
        return value

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ScenarioError(f"{self.where}: unknown key(s) {unknown}")

    def table(self, key: str) -> Mapping[str, Any]:
        value = self._get(key, {})
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{self.where}.{key} must be a table")
        return value

    def optional_table(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key, _ABSENT)
        if value is _ABSENT:
            return None
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{self.where}.{key} must be a table")
        return value

    def tables(self, key: str) -> list[Any]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where}.{key} must be an array of tables")
        return value

    def text(self, key: str, default: str | None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.where}.{key} must be a string")
        return value

    def identifier(self, key: str) -> str:
        value = self.text(key, None)
        if not value or len(value) > 24 or not all(c.isalnum() or c in "-_" for c in value):
            raise ScenarioError(f"{self.where}.{key} must be 1..24 of [A-Za-z0-9_-]")
        return value

    def choice(self, key: str, default: str | None, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in allowed:
            raise ScenarioError(f"{self.where}.{key} must be one of {list(allowed)}, not {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where}.{key} must be true or false")
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScenarioError(f"{self.where}.{key} must be an integer in {low}..{high}")
        return value

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        if self.raw.get(key, _MISSING) is _MISSING:
            self.used.add(key)
            return None
        return self.integer(key, None, low, high)

    def integers(self, key: str, default: list[int], low: int, high: int) -> list[int]:
        value = self._get(key, default)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value
        ):
            raise ScenarioError(f"{self.where}.{key} must be a list of integers in {low}..{high}")
        return value

    def number(self, key: str, default: float | None, low: float, high: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{self.where}.{key} must be a number")
        if not low <= value <= high:
            raise ScenarioError(f"{self.where}.{key} must be in {low:g}..{high:g}")
        return float(value)

    def strings(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ScenarioError(f"{self.where}.{key} must be a list of strings")
        return value
