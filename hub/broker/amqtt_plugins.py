"""The hub's authentication and topic-access plugins for amqtt 0.12.

amqtt 0.12 loads plugins named in the broker config's ``plugins`` mapping
(dotted class path -> options); each plugin's nested ``Config`` dataclass is
filled from those options by ``dacite`` and handed over as ``context.config``.
The broker then calls, for every plugin that subclasses the right base:

* ``BaseAuthPlugin.authenticate(session=...)`` once per CONNECT: the login is
  accepted only if every plugin returns ``True`` (``None`` abstains);
* ``BaseTopicPlugin.topic_filtering(session=..., topic=..., action=...)`` for
  every SUBSCRIBE filter, every PUBLISH topic and every delivery (``RECEIVE``);
  any falsy answer denies.

The stock plugins are not safe for the hub (see ``docs/brokers.md``):
``AnonymousAuthPlugin`` accepts any username, ``TopicAccessControlListPlugin``
allows every publish unless a publish ACL is configured and lets a ``+`` grant
cover a ``#`` subscription. These replacements deny by default and delegate
every decision to :mod:`hub.broker.acl`.

What a plugin *cannot* do in amqtt 0.12 (no hook exists) is handled by the
broker subclass in :mod:`hub.broker.embedded`: refuse a login before amqtt
touches the session it names, check a CONNECT's will topic and retain flag,
drop retained PUBLISHes (``topic_filtering`` sees the topic, not the retain
flag), cap packet and payload sizes, and kick a client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from hub.broker import acl
from hub.broker.principals import CredentialVerifier, Principal

logger = logging.getLogger(__name__)

PRINCIPAL_ATTRIBUTE = "hub.principal"
"""Key of the authenticated :class:`Principal` in ``Session.attributes``.

Kept on the session object rather than in a dict keyed by client id, so a
session takeover (old connection's disconnect event arriving after the new
login) can never erase or reuse another connection's principal. A kick
(``EmbeddedBroker.disconnect_client``) removes it and drops the session, so
nothing the kicked connection still has in flight passes the topic plugin, and
a re-login gets a fresh principal from the verifier.
"""


def principal_of(session: Any) -> Principal | None:
    """Return the principal the auth plugin stored on an amqtt session."""
    attributes = getattr(session, "attributes", None)
    if not isinstance(attributes, dict):
        return None
    principal = attributes.get(PRINCIPAL_ATTRIBUTE)
    return principal if isinstance(principal, Principal) else None


def describe_login(client_id: object, username: object) -> str:
    """Render a login for logs: ids only, repr-escaped, truncated; never a password."""
    return f"client_id={str(client_id)[:80]!r} username={str(username)[:80]!r}"


class HubAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Authenticates every CONNECT through the hub's :class:`CredentialVerifier`.

    Refuses, before calling the verifier, any login whose client id differs
    from its username or whose id is invalid or has no known kind prefix. Claim
    sessions (``claim-`` usernames) may carry any password: the verifier alone
    decides, and is trusted only if it answers with a CLAIM principal.
    """

    @dataclass
    class Config:
        """Options given in the broker config under this plugin's path."""

        verifier: Any = None
        """The :class:`CredentialVerifier` to ask (an object, not text)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        verifier = getattr(self.context.config, "verifier", None)
        if verifier is None or not callable(getattr(verifier, "verify", None)):
            raise ValueError("HubAuthPlugin needs a CredentialVerifier as 'verifier'")
        self._verifier: CredentialVerifier = verifier

    async def authenticate(self, *, session: Any) -> bool:
        """Return ``True`` and remember the principal for a valid login."""
        client_id, username = session.client_id, session.username
        if not acl.login_acceptable(client_id, username):
            logger.info("login refused (bad identity): %s", describe_login(client_id, username))
            return False
        try:
            # The verifier is synchronous (database, PBKDF2): keep it off the loop.
            principal = await asyncio.to_thread(self._verifier.verify, username, session.password)
        except Exception:  # a verifier failure must refuse, never crash the broker
            logger.exception("credential verifier failed: %s", describe_login(client_id, username))
            return False
        if principal is None or not acl.principal_matches(principal, client_id):
            logger.info("login refused: %s", describe_login(client_id, username))
            return False
        session.attributes[PRINCIPAL_ATTRIBUTE] = principal
        return True


class HubTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Allows a subscribe, publish or delivery only if :mod:`hub.broker.acl` does."""

    @dataclass
    class Config:
        """No options: the rules live in :mod:`hub.broker.acl`."""

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        """Return whether ``session``'s principal may do ``action`` on ``topic``."""
        principal = principal_of(session)
        if principal is None or not isinstance(topic, str):
            return False
        allowed = _decide(principal, topic, action)
        if not allowed and action != Action.RECEIVE:
            logger.info("denied %s on %r for %s", action, topic[:300], principal.username)
        return allowed


def _decide(principal: Principal, topic: str, action: Action | None) -> bool:
    if action == Action.PUBLISH:
        return acl.may_publish(principal, topic)
    if action == Action.SUBSCRIBE:
        return acl.may_subscribe(principal, topic)
    if action == Action.RECEIVE:
        return acl.may_receive(principal, topic)
    return False  # an action this code does not know about


def plugin_config(verifier: CredentialVerifier) -> dict[str, dict[str, Any]]:
    """Return the ``plugins`` mapping for an amqtt ``BrokerConfig``.

    Only these two plugins: no logging, statistics or ``$SYS`` plugins, which
    cost about 40% of amqtt's throughput and publish broker internals.
    """
    return {
        f"{__name__}.HubAuthPlugin": {"verifier": verifier},
        f"{__name__}.HubTopicPlugin": {},
    }
