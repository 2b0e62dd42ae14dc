"""Calls retried across a hub restart treat "already applied" as done (simulator/provision.py,
simulator/rollout.py): against a fake hub that applies a request and then loses its answer.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from simulator import billing, provision, rollout
from simulator.environment import Environment, tenant_name
from simulator.hubapi import HubApi, HubApiError
from simulator.processes import ProcessError
from simulator.provision import Fleet
from simulator.scenario import RolloutPlan

Handler = Callable[[httpx.Request], httpx.Response]


class FakeHub:
    """Just enough of the REST API; ``lose`` names paths whose next answer is lost."""

    def __init__(self) -> None:
        self.packages: list[dict[str, Any]] = []
        self.rollouts: list[dict[str, Any]] = []
        self.entitlement_status = "active"
        self.lose: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append(f"{request.method} {path}")
        response = self._route(request.method, path, request)
        if f"{request.method} {path}" in self.lose:
            self.lose.discard(f"{request.method} {path}")
            raise httpx.ReadError("the hub died after its commit", request=request)
        return response

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if (method, path) == ("POST", "/firmware/packages"):
            return self._upload(request)
        if (method, path) == ("GET", "/firmware/packages"):
            return _page(self.packages)
        if (method, path) == ("POST", "/firmware/rollouts"):
            body = json.loads(request.content)
            self.rollouts.append({"id": f"r{len(self.rollouts) + 1}", "state": "draft", **body})
            return httpx.Response(201, json=self.rollouts[-1])
        if (method, path) == ("GET", "/firmware/rollouts"):
            return _page(self.rollouts)
        if path.startswith("/firmware/rollouts/"):
            return self._rollout(method, path)
        if path.endswith("/revoke"):
            return self._revoke()
        if method == "GET" and path.startswith("/entitlements/"):
            return httpx.Response(200, json={"status": self.entitlement_status})
        if path.endswith("/activations"):
            return httpx.Response(409, json={"error": "already_activated", "message": "x"})
        return httpx.Response(404, json={"error": "not_found"})

    def _upload(self, request: httpx.Request) -> httpx.Response:
        if any(p["version"] == rollout.VERSION for p in self.packages):
            return httpx.Response(409, json={"error": "duplicate_version", "message": "taken"})
        assert b'name="required_product_id"' in request.content
        self.packages.append({"id": f"p{len(self.packages) + 1}", "version": rollout.VERSION})
        return httpx.Response(201, json=self.packages[-1])

    def _rollout(self, method: str, path: str) -> httpx.Response:
        rollout_id = path.split("/")[3]
        found = next(r for r in self.rollouts if r["id"] == rollout_id)
        if method == "POST" and path.endswith("/start"):
            if found["state"] != "draft":
                return httpx.Response(409, json={"error": "invalid_state", "message": "x"})
            found |= {"state": "running", "target_count": 3, "skipped": {"not_entitled": 1}}
        return httpx.Response(200, json=found)

    def _revoke(self) -> httpx.Response:
        if self.entitlement_status == "revoked":
            return httpx.Response(409, json={"error": "invalid_state", "message": "revoked"})
        self.entitlement_status = "revoked"
        return httpx.Response(200, json={"status": "revoked"})


def _page(items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, json={"items": items, "total": len(items), "limit": 50, "offset": 0})


def run(hub: FakeHub, call: Callable[[HubApi], Coroutine[Any, Any, Any]]) -> Any:
    async def go() -> Any:
        api = HubApi("http://hub", "hubk_x_y", transport=httpx.MockTransport(hub))
        try:
            return await call(api)
        finally:
            await api.close()

    return asyncio.run(go())


FLEET = Fleet(
    class_id="c1",
    class_uuid="00000000-0000-4000-8000-000000000001",
    ota_product_id="ota",
    entitlements={"g": "e1"},
    groups={"g": ["s1"]},
    device_ids={"s1": "dev-1"},
)
PLAN = RolloutPlan(image_kib=1)


def test_a_rollout_whose_answers_are_lost_is_created_and_started_once() -> None:
    hub = FakeHub()
    hub.lose = {
        "POST /firmware/packages",
        "POST /firmware/rollouts",
        "POST /firmware/rollouts/r1/start",
    }
    started = run(hub, lambda api: rollout.start(api, FLEET, PLAN, b"image"))
    assert (len(hub.packages), len(hub.rollouts)) == (1, 1)  # nothing applied twice
    assert (started.package_id, started.rollout_id) == ("p1", "r1")
    assert hub.rollouts[0]["state"] == "running"
    assert started.skipped == {"not_entitled": 1}
    # the start's lost answer was retried and answered 409 invalid_state: done
    assert hub.calls.count("POST /firmware/rollouts/r1/start") == 2


def test_an_upload_answered_duplicate_version_is_the_package_uploaded_before() -> None:
    hub = FakeHub()
    hub.packages.append({"id": "p9", "version": rollout.VERSION})
    assert run(hub, lambda api: rollout.upload(api, FLEET, PLAN, b"image"))["id"] == "p9"


def test_a_start_refused_on_a_draft_is_an_error() -> None:
    hub = FakeHub()
    hub.rollouts.append({"id": "r1", "state": "draft"})

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/start"):
            return httpx.Response(409, json={"error": "invalid_state"})
        return hub(request)

    async def go() -> Any:
        api = HubApi("http://hub", "k", transport=httpx.MockTransport(refuse))
        try:
            return await rollout.start(api, FLEET, PLAN, b"image")
        finally:
            await api.close()

    with pytest.raises(HubApiError, match="409"):
        asyncio.run(go())


def test_a_revocation_retried_after_it_was_applied_is_done() -> None:
    hub = FakeHub()
    hub.lose = {"POST /entitlements/e1/revoke"}
    assert run(hub, lambda api: provision.revoke(api, FLEET, "g"))["status"] == "revoked"
    assert hub.calls == [
        "POST /entitlements/e1/revoke",  # applied, answer lost
        "POST /entitlements/e1/revoke",  # 409 invalid_state
        "GET /entitlements/e1",  # revoked: done
    ]


def test_a_revocation_refused_for_another_reason_is_an_error() -> None:
    hub = FakeHub()

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/revoke"):
            return httpx.Response(409, json={"error": "invalid_state", "message": "x"})
        return hub(request)  # the entitlement is still active

    async def go() -> Any:
        api = HubApi("http://hub", "k", transport=httpx.MockTransport(refuse))
        try:
            return await provision.revoke(api, FLEET, "g")
        finally:
            await api.close()

    with pytest.raises(HubApiError, match="409"):
        asyncio.run(go())


def test_an_activation_found_applied_is_done() -> None:
    hub = FakeHub()  # answers every activation 409 already_activated
    ota = Fleet(**{**FLEET.__dict__, "ota_entitlements": {"g": "e2"}})
    run(hub, lambda api: provision.activate(api, ota, "g"))
    assert hub.calls == ["POST /entitlements/e1/activations", "POST /entitlements/e2/activations"]


def test_every_run_creates_a_tenant_of_its_own() -> None:
    names = {tenant_name() for _ in range(20)}
    assert len(names) == 20 and all(n.startswith("Fleet Simulator ") for n in names)


class _StuckHub:
    """A hub process that ignores SIGTERM (stop kills it and raises), then starts again."""

    def __init__(self) -> None:
        self.started = 0

    def stop(self) -> int:
        raise ProcessError("hub ignored SIGTERM:\nlog tail")

    def start(self) -> None:
        self.started += 1


def test_a_restart_whose_hub_ignores_sigterm_still_restarts_it_and_says_so() -> None:
    stuck = _StuckHub()
    env = Environment("embedded", "http://hub", "k", "127.0.0.1", 1, "127.0.0.1", 2, hub=stuck)  # type: ignore[arg-type]
    problem = asyncio.run(env.broker_restart(0.0))
    assert stuck.started == 1  # a supervisor would start it again: so does the simulator
    assert problem == "hub ignored SIGTERM: killed after the time-out"


class SaleHub:
    """Listings and creations of a sale; ``lose``: next answer lost, ``slow``: times out.

    A lost answer comes after the commit (``ReadError``); a timed-out request is
    committed only ``lag`` listings later, as a slow hub would.
    """

    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.lose: set[str] = set()
        self.slow: set[str] = set()
        self.lag = 0
        self.late: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append(f"{request.method} {path}")
        if request.method == "GET":
            if self.lag:
                self.lag -= 1
            elif self.late:
                for where, item in self.late:
                    self.items.setdefault(where, []).append(item)
                self.late = []
            wanted = dict(request.url.params)
            listed = [
                i
                for i in self.items.get(path, [])
                if all(str(i.get(k)) == v for k, v in wanted.items() if k in i)
            ]
            return _page(listed)
        item = {"id": f"{path.strip('/').replace('/', '-')}-{len(self.calls)}"}
        item |= json.loads(request.content)
        if f"POST {path}" in self.slow:
            self.slow.discard(f"POST {path}")
            self.late.append((path, item))
            raise httpx.ReadTimeout("the hub is slow", request=request)
        self.items.setdefault(path, []).append(item)
        if f"POST {path}" in self.lose:
            self.lose.discard(f"POST {path}")
            raise httpx.ReadError("the hub died after its commit", request=request)
        return httpx.Response(201, json=item)


def _sale_scenario() -> Any:
    groups = [
        types.SimpleNamespace(name="g1", firmware_entitled=True),
        types.SimpleNamespace(name="g2", firmware_entitled=False),
    ]
    return types.SimpleNamespace(groups=groups, rollout=types.SimpleNamespace(gated=True))


def test_a_sale_whose_answers_are_lost_creates_everything_once() -> None:
    hub = SaleHub()
    hub.lose = {"POST /products", "POST /accounts", "POST /entitlements"}
    fleet = Fleet(groups={"g1": ["s1", "s2"], "g2": ["s3"]})
    run(hub, lambda api: provision.sell(api, _sale_scenario(), fleet))
    assert len(hub.items["/products"]) == 2  # the product and firmware care, once each
    assert len(hub.items["/accounts"]) == 1
    entitlements = hub.items["/entitlements"]
    assert len(entitlements) == 3  # one per group, one firmware care for g1: none twice
    assert sorted(fleet.entitlements) == ["g1", "g2"]
    assert fleet.entitlements["g1"] != fleet.entitlements["g2"]
    assert {e["id"] for e in entitlements} == {
        *fleet.entitlements.values(),
        *fleet.ota_entitlements.values(),
    }
    assert hub.calls.count("POST /accounts") == 1  # found, not sent again


def test_a_create_that_timed_out_is_found_later_and_never_sent_again() -> None:
    hub = SaleHub()
    hub.slow, hub.lag = {"POST /accounts"}, 2  # committed only after two more listings
    found = run(
        hub,
        lambda api: api.post_once(
            "/accounts",
            {"name": "Sim"},
            lambda: _first(api, "/accounts"),
        ),
    )
    assert found["name"] == "Sim"
    assert hub.calls.count("POST /accounts") == 1
    assert len(hub.items["/accounts"]) == 1


def test_a_timed_out_create_that_never_shows_up_fails_clearly() -> None:
    hub = SaleHub()
    hub.slow, hub.lag = {"POST /accounts"}, 10_000  # never committed as far as we can see

    async def go(api: HubApi) -> Any:
        return await api.post_once(
            "/accounts", {"name": "Sim"}, lambda: _first(api, "/accounts"), retry_for=1.5
        )

    with pytest.raises(HubApiError, match="not sent again"):
        run(hub, go)
    assert hub.calls.count("POST /accounts") == 1


def test_a_plain_request_that_may_have_been_applied_is_not_resent() -> None:
    hub = SaleHub()
    hub.lose = {"POST /accounts"}
    with pytest.raises(HubApiError) as caught:
        run(hub, lambda api: api.request("POST", "/accounts", json={"n": 1}, resend=False))
    assert caught.value.maybe_applied and not caught.value.in_flight
    assert hub.calls == ["POST /accounts"]
    hub.lose = {"POST /accounts"}  # a call that may be resent is (the default)
    run(hub, lambda api: api.request("POST", "/accounts", json={"n": 2}, retry_for=5.0))
    assert hub.calls.count("POST /accounts") == 3


async def _first(api: HubApi, path: str) -> Any | None:
    items = (await api.get(path))["items"]
    return items[0] if items else None


def test_a_subscription_whose_answers_are_lost_is_created_once() -> None:
    hub = SaleHub()
    hub.items["/entitlements"] = [  # the group's perpetual one is not the subscription
        {"id": "e1", "account_id": "a1", "product_id": "p1", "license_model": "perpetual"}
    ]
    hub.lose = {"POST /entitlements", "POST /products/p1/price-plans"}
    fleet = Fleet(account_id="a1", product_id="p1")
    end = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
    sub = run(
        hub,
        lambda api: billing.subscribe(api, fleet, period_end=end, quantity=3, plan={"x": 1}),
    )
    assert len(hub.items["/entitlements"]) == 2
    assert sub.entitlement_id == hub.items["/entitlements"][1]["id"]
    assert [p["id"] for p in hub.items["/products/p1/price-plans"]] == [sub.plan_id]
