"""Firmware delivery messages (issue #4): offers, chunk requests and replies, install step reports.

Every message type defined here is listed in :data:`MESSAGES`, which
:data:`protocols.messages.MESSAGE_TYPES` merges into the one decoder registry.
"""

from __future__ import annotations

from protocols.fields import Message

MESSAGES: tuple[type[Message], ...] = ()
