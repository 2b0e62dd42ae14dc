"""The one error tree of the wire protocol.

Every failure to read, verify or route a message raises a subclass of
:class:`ProtocolError`; callers catch that one class at their IO edge::

    ProtocolError
    ├── DecodeError            bytes are not a valid strict-CBOR document
    │   └── PayloadTooLarge    size cap exceeded before decoding started
    ├── MessageError           valid CBOR, but not a valid message
    │   └── UnsupportedVersion the major protocol version ``v`` is unknown
    ├── TopicError             a topic or an id in it is not acceptable
    └── CoseError              a COSE structure is malformed
        ├── UnsupportedAlgorithm  algorithm absent, unknown or not allowed
        ├── UnknownKey            no trusted key for the key id
        └── SignatureInvalid      the signature does not verify

``code`` is a short stable string that travels in error replies on the wire.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol error."""

    code = "protocol_error"


class DecodeError(ProtocolError):
    """The bytes are not one well-formed, strict CBOR document."""

    code = "decode_error"


class PayloadTooLarge(DecodeError):
    """The payload exceeds the size cap; nothing was decoded."""

    code = "payload_too_large"


class MessageError(ProtocolError):
    """The document decoded but is not a valid message of the expected type."""

    code = "invalid_message"


class UnsupportedVersion(MessageError):
    """The message's major protocol version ``v`` is not supported."""

    code = "unsupported_version"


class TopicError(ProtocolError):
    """A topic, or an id inside it, is malformed or not allowed."""

    code = "invalid_topic"


class CoseError(ProtocolError):
    """A COSE structure is malformed or violates the signing profile."""

    code = "cose_error"


class UnsupportedAlgorithm(CoseError):
    """The COSE algorithm is absent, unknown, or not allowed by the profile."""

    code = "unsupported_algorithm"


class UnknownKey(CoseError):
    """No trusted key matches the message's key id."""

    code = "unknown_key"


class SignatureInvalid(CoseError):
    """The signature does not verify under the selected key."""

    code = "signature_invalid"
