"""Hypothesis strategies for the messages in ``protocols.firmware_messages``.

``tests/protocols/test_messages.py`` round-trips every registered message type
and fails when one has no strategy here.
"""

from typing import Any

FIRMWARE_STRATEGIES: dict[type, Any] = {}
