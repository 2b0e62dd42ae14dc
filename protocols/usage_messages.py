"""Usage metering messages (issue #5): batches of usage records and their acknowledgements.

Every message type defined here is listed in :data:`MESSAGES`, which
:data:`protocols.messages.MESSAGE_TYPES` merges into the one decoder registry.
"""

from __future__ import annotations

from protocols.fields import Message

MESSAGES: tuple[type[Message], ...] = ()
