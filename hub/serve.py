"""``hub serve``: broker, MQTT client, REST API and scheduler in one process.

Start order: migrations, keys, broker (embedded amqtt, managed Mosquitto, or an
external one), the hub's MQTT client, the scheduler, then the REST API under
uvicorn in the same event loop as the embedded broker. SIGTERM and SIGINT stop
everything in reverse order. No state lives only in this process: the database
holds it all, so more workers can be added later.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hub.app import create_app
from hub.broker.passwords import hash_password
from hub.clock import utc_now
from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import upgrade
from hub.errors import BrokerError
from hub.inbound import InboundRouter
from hub.key_rotation import load_rotations
from hub.keys import HubKeys, load_hub_keys
from hub.manifests.publisher import ManifestPublisher
from hub.manifests.service import ManifestPolicy, RotationStep
from hub.mqtt.adapter import HubMqttClient
from hub.plugins import BatchHandler, HubContext, inbound_handlers, load_plugins, periodic_jobs
from hub.registry.claims import ClaimPolicy
from hub.registry.credentials import DbCredentialVerifier, iter_device_password_hashes
from hub.scheduler import build_scheduler
from hub.settings import Settings
from protocols import topics

log = logging.getLogger("hub")


@dataclass
class BrokerHandle:
    """Where the hub's MQTT clients connect, and how to stop or refresh the brokers.

    ``claim_port`` is set when claim sessions live on a broker of their own
    (Mosquitto: a separate process, so claim client ids can never collide with
    device ids); otherwise claims share the device broker.
    """

    host: str
    port: int
    description: str
    stop: Callable[[], Awaitable[None]]
    credentials_changed: Callable[[], None] | None = None
    claim_port: int | None = None
    claim_host: str | None = None
    kick: Callable[[str], None] | None = None

    def device_access_changed(self, device_id: str) -> None:
        """A device was disabled or reset: refresh credentials, close its session."""
        if self.credentials_changed is not None:
            self.credentials_changed()
        if self.kick is not None:
            self.kick(device_id)
        log.info("device %s: broker access refreshed", device_id)


def configure_logging(level: str) -> None:
    """One log format for the whole process (secrets are never logged)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def serve(settings: Settings) -> None:
    """Run the hub until SIGTERM or SIGINT.

    Raises:
        PortInUse: a configured port is already taken.
        BrokerError: the broker could not be started or reached.
    """
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))


def check_port_free(host: str, port: int, what: str, hint: str) -> None:
    """Raise :class:`PortInUse` with a clear message when ``host:port`` is taken."""
    if port == 0:
        return
    from hub.broker.ports import probe_ports

    probe_ports(host, port, what=what, hint=hint)


async def _serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    check_port_free(settings.api_host, settings.api_port, "REST API", "--api-port / HUB_API_PORT")
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    keys = load_hub_keys(settings)
    async with AsyncExitStack() as stack:
        stack.callback(engine.dispose)
        broker = await _start_broker(settings, session_factory, keys)
        stack.push_async_callback(stop_within, broker.stop, settings.shutdown_timeout_seconds)
        publisher = ManifestPublisher(
            session_factory=session_factory,
            policy=manifest_policy(settings, keys),
            clock=utc_now,
            # Late-bound: the clients are built next, with publisher.delivered.
            publish=lambda out: clients[0].publish(out),  # noqa: PLW0108
            seat_timeout=timedelta(seconds=settings.seat_timeout_seconds),
        )
        plugins = load_plugins()
        context = HubContext(
            settings=settings,
            session_factory=session_factory,
            keys=keys,
            clock=utc_now,
            publish=lambda out: clients[0].publish(list(out)),
        )
        clients = _mqtt_clients(
            context, broker, publisher.delivered, inbound_handlers(plugins, context)
        )
        for client in clients:
            await asyncio.to_thread(client.start)
            # Off the event loop: the embedded broker on this loop must still
            # acknowledge while the dispatcher finishes its batch.
            stack.push_async_callback(asyncio.to_thread, client.stop)
        for plugin in plugins:
            if plugin.on_start is not None:
                plugin.on_start(context)
        scheduler = build_scheduler(
            session_factory,
            utc_now,
            presence_stale_seconds=settings.presence_stale_seconds,
            claim_skew_seconds=settings.claim_skew_seconds,
            maintenance=publisher.maintain,
            maintenance_interval_seconds=settings.maintenance_interval_seconds,
            jobs=periodic_jobs(plugins, context),
        )
        scheduler.start()
        stack.callback(scheduler.shutdown, wait=False)
        log.info("broker: %s", broker.description)
        log.info("database: %s", make_url(url).render_as_string(hide_password=True))
        await _run_api(context, clients, broker, publisher)
    log.info("hub stopped")


def manifest_policy(settings: Settings, keys: HubKeys) -> ManifestPolicy:
    """How this hub signs and leases manifests."""
    return ManifestPolicy(
        kid=keys.manifest.kid,
        sign=keys.manifest.sign,
        rotations=tuple(RotationStep.from_signed(doc) for doc in load_rotations(settings)),
        lease_seconds=settings.manifest_lease_seconds,
        renew_before_seconds=settings.manifest_renew_before_seconds,
        ack_timeout_seconds=settings.manifest_ack_timeout_seconds,
    )


async def stop_within(stop: Callable[[], Awaitable[None]], seconds: float) -> None:
    """Await ``stop`` for at most ``seconds``; a broker that hangs must not keep the hub up."""
    try:
        await asyncio.wait_for(stop(), seconds)
    except TimeoutError:
        log.warning("the broker did not stop within %.1f s; leaving it", seconds)


async def stop_all(stops: Sequence[Callable[[], None]]) -> None:
    """Run blocking ``stops`` at once, each in its own thread.

    Each is bounded by itself (Mosquitto: SIGTERM, then SIGKILL); started
    together, one that is slow (or a caller's time-out) cannot keep the
    others from starting.
    """
    await asyncio.gather(*(asyncio.to_thread(stop) for stop in stops))


def api_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """The REST API server's configuration.

    A bounded graceful shutdown: without it uvicorn waits for every open
    request, and a firmware download to a stalled device never ends.
    """
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )


def _mqtt_clients(
    context: HubContext,
    broker: BrokerHandle,
    on_acknowledged: Callable[[list[str]], None],
    handlers: Sequence[BatchHandler],
) -> list[HubMqttClient]:
    settings, session_factory, keys = context.settings, context.session_factory, context.keys
    router = InboundRouter(
        session_factory=session_factory,
        claim_policy=ClaimPolicy(anchors=keys.anchors(), skew_seconds=settings.claim_skew_seconds),
        manifest_policy=manifest_policy(settings, keys),
        clock=utc_now,
        max_payload_bytes=settings.max_payload_bytes,
        handlers=handlers,
    )

    def client(
        port: int, client_id: str, filters: tuple[str, ...], host: str = broker.host
    ) -> HubMqttClient:
        return HubMqttClient(
            host=host,
            port=port,
            client_id=client_id,
            username=settings.hub_client_id,
            password=keys.mqtt_password,
            router=router,
            filters=filters,
            on_credentials_changed=broker.credentials_changed,
            on_acknowledged=on_acknowledged,
        )

    if broker.claim_port is None:
        both = (topics.HUB_UP_FILTER, topics.HUB_CLAIM_FILTER)
        return [client(broker.port, settings.hub_client_id, both)]
    # On the claim broker anyone may connect anonymously, so the hub's client id
    # there is unguessable: nobody can take its connection over.
    claim_client_id = f"{settings.hub_client_id}-claims-{secrets.token_hex(8)}"
    return [
        client(broker.port, settings.hub_client_id, (topics.HUB_UP_FILTER,)),
        client(
            broker.claim_port,
            claim_client_id,
            (topics.HUB_CLAIM_FILTER,),
            host=broker.claim_host or broker.host,
        ),
    ]


async def _start_broker(
    settings: Settings, session_factory: sessionmaker[Session], keys: HubKeys
) -> BrokerHandle:
    hub_hash = hash_password(keys.mqtt_password)
    if settings.mqtt_url or settings.broker == "external":
        return _external_broker(settings, session_factory, hub_hash)
    if settings.broker == "mosquitto":
        return await _managed_mosquitto(settings, session_factory, hub_hash)
    from hub.broker.embedded import EmbeddedBroker

    verifier = DbCredentialVerifier(
        session_factory, hub_username=settings.hub_client_id, hub_password_hash=hub_hash
    )
    embedded = EmbeddedBroker(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        verifier=verifier,
        max_payload_bytes=settings.max_payload_bytes,
    )
    await embedded.start()
    loop = asyncio.get_running_loop()

    def kick(device_id: str) -> None:
        # Called from the API's worker threads; the broker lives on this loop.
        asyncio.run_coroutine_threadsafe(embedded.disconnect_client(device_id), loop).result(10)

    return BrokerHandle(
        host=settings.mqtt_host,
        port=embedded.port,
        description=f"embedded amqtt at mqtt://{settings.mqtt_host}:{embedded.port}",
        stop=embedded.stop,
        kick=kick,
    )


def _external_broker(
    settings: Settings, session_factory: sessionmaker[Session], hub_hash: str
) -> BrokerHandle:
    if not settings.mqtt_url:
        raise BrokerError("broker 'external' needs --mqtt-url / HUB_MQTT_URL")
    host, port = _parse_mqtt_url(settings.mqtt_url)
    claim_host, claim_port = (
        _parse_mqtt_url(settings.claim_mqtt_url) if settings.claim_mqtt_url else (None, None)
    )

    async def _nothing() -> None:
        return None

    claims = f", claims at mqtt://{claim_host}:{claim_port}" if claim_port else ""
    return BrokerHandle(
        host=host,
        port=port,
        claim_host=claim_host,
        claim_port=claim_port,
        description=f"external broker at mqtt://{host}:{port}{claims}",
        stop=_nothing,
        credentials_changed=_password_file_sync(settings, session_factory, hub_hash),
    )


def _password_file_sync(
    settings: Settings, session_factory: sessionmaker[Session], hub_hash: str
) -> Callable[[], None] | None:
    """With an external Mosquitto on this host, keep its password file in sync."""
    password_file = settings.mosquitto_password_file
    if password_file is None:
        log.warning(
            "external broker without HUB_MOSQUITTO_PASSWORD_FILE: newly claimed devices can log"
            " in only after the broker's credentials are refreshed (hub mosquitto-config)"
        )
        return None
    from hub.broker.mosquitto import sync_password_file

    def sync() -> None:
        with session_factory() as session:
            devices = list(iter_device_password_hashes(session))
        sync_password_file(
            password_file,
            hub_username=settings.hub_client_id,
            hub_password_hash=hub_hash,
            device_credentials=devices,
            pid_file=settings.mosquitto_pid_file,
        )

    sync()  # the file matches the database from the start
    return sync


def _parse_mqtt_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise BrokerError(f"unsupported MQTT URL {url!r}; use mqtt://host:port")
    return parts.hostname, parts.port or 1883


async def _managed_mosquitto(
    settings: Settings, session_factory: sessionmaker[Session], hub_hash: str
) -> BrokerHandle:
    from hub.broker.mosquitto import ManagedClaimMosquitto, ManagedMosquitto, mosquitto_version

    binary = settings.mosquitto_binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise BrokerError("--broker mosquitto needs a mosquitto binary (HUB_MOSQUITTO_BINARY)")

    def credentials() -> list[tuple[str, str]]:
        with session_factory() as session:
            return list(iter_device_password_hashes(session))

    devices = ManagedMosquitto(
        binary=binary,
        directory=settings.data_dir / "mosquitto",
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        hub_username=settings.hub_client_id,
        hub_password_hash=hub_hash,
        device_credentials=credentials(),
        max_payload_bytes=settings.max_payload_bytes,
    )
    claims = ManagedClaimMosquitto(
        binary=binary,
        directory=settings.data_dir / "mosquitto-claims",
        host=settings.mqtt_host,
        port=settings.claim_mqtt_port or settings.mqtt_port + 1,
        hub_port=0,  # the hub's own authenticated listener on the claim broker
        hub_username=settings.hub_client_id,
        hub_password_hash=hub_hash,
        max_payload_bytes=settings.max_payload_bytes,
    )
    await asyncio.to_thread(devices.start)
    try:
        await asyncio.to_thread(claims.start)
    except BrokerError:
        await asyncio.to_thread(devices.stop)
        raise

    async def stop() -> None:
        await stop_all([claims.stop, devices.stop])

    host = settings.mqtt_host
    return BrokerHandle(
        host=host,
        port=devices.port,
        claim_port=claims.hub_port,
        description=(
            f"managed mosquitto {mosquitto_version(binary)}: devices at mqtt://{host}:{devices.port},"
            f" claims at mqtt://{host}:{claims.port} (a separate process; hub listener"
            f" :{claims.hub_port})"
        ),
        stop=stop,
        credentials_changed=lambda: devices.reload(credentials()),
    )


async def _run_api(
    context: HubContext,
    clients: list[HubMqttClient],
    broker: BrokerHandle,
    publisher: ManifestPublisher,
) -> None:
    settings = context.settings
    app = create_app(settings, session_factory=context.session_factory)
    app.state.hub_context = context
    app.state.mqtt_clients = clients
    app.state.device_access_changed = broker.device_access_changed
    app.state.on_devices_changed = publisher.devices_changed
    config = api_config(app, settings)
    server = uvicorn.Server(config)

    def _stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    # Our handlers first: uvicorn restores and re-raises into them after shutdown,
    # which then lets the exit stack above close broker, client and scheduler.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    log.info("REST API at http://%s:%d (OpenAPI at /docs)", settings.api_host, settings.api_port)
    await server.serve()
