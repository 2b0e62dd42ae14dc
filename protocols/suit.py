"""SUIT firmware envelopes (draft-ietf-suit-manifest): build, parse and verify.

Pure and sans-IO: no clock, no files. The anti-rollback state is an immutable
:class:`SuitState` passed in and returned. The envelope layout we build, the
verification order and what of the draft we do not support are in
``docs/suit.md``. In short::

    107({2: bstr([bstr(SUIT_Digest), bstr(COSE_Sign1)]), 3: bstr(manifest)})

:func:`inspect_envelope` checks, in this order: size cap, envelope structure,
the SHA-256 digest of the manifest, the COSE_Sign1 over that digest
(``protocols.cose``, STRICT profile, EdDSA or ES256), then decodes the now
authenticated manifest and checks the digests of any severable members that
travel in the envelope. :func:`verify_envelope` adds the vendor and class ids
and the sequence number (anti-rollback). :func:`verify_image` and
:func:`verify_chunk` check payload bytes against a verified manifest.

Failures raise :class:`~protocols.errors.ProtocolError` subclasses, never a
bool: the size cap raises ``PayloadTooLarge``, the signature step raises
``CoseError`` subclasses unchanged (``UnsupportedAlgorithm``, ``UnknownKey``,
``SignatureInvalid``, or ``CoseError`` itself for a malformed COSE_Sign1), and
everything else raises a :class:`SuitError`.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from protocols import cbor, cose
from protocols.errors import CoseError, DecodeError, PayloadTooLarge, ProtocolError

# --- errors ---------------------------------------------------------------------------------


class SuitError(ProtocolError):
    """Base class of SUIT envelope, manifest and payload failures."""

    code = "suit_error"


class SuitMalformed(SuitError):
    """The envelope or manifest is not one we accept (structure, types, unsupported use)."""

    code = "suit_malformed"


class SuitDigestMismatch(SuitError):
    """The manifest, or a severable member, does not match its SUIT_Digest."""

    code = "suit_digest_mismatch"


class SuitWrongDevice(SuitError):
    """The manifest's vendor or class id is not this device's (or is absent)."""

    code = "suit_wrong_device"


class SuitRollback(SuitError):
    """The sequence number is lower than the highest one accepted."""

    code = "suit_rollback"


class SuitAlreadyInstalled(SuitError):
    """The sequence number equals the highest one accepted: nothing to do."""

    code = "suit_already_installed"


class SuitImageMismatch(SuitError):
    """A payload does not match the manifest's image digest (or none is declared)."""

    code = "suit_image_mismatch"


class SuitImageSize(SuitImageMismatch):
    """A payload is larger or smaller than the manifest's image size."""

    code = "suit_image_size"


class SuitChunkMismatch(SuitError):
    """A chunk does not match its digest (or the manifest declares no chunks)."""

    code = "suit_chunk_mismatch"


class SuitChunkOutOfRange(SuitChunkMismatch):
    """A chunk index is outside ``0 .. chunk_count - 1``."""

    code = "suit_chunk_out_of_range"


class SuitChunkSize(SuitChunkMismatch):
    """A chunk is oversize or truncated for its index."""

    code = "suit_chunk_size"


# --- constants ------------------------------------------------------------------------------

SUIT_ENVELOPE_TAG = 107
MAX_ENVELOPE_SIZE = 256 * 1024
MAX_COMPONENTS = 16
MAX_AUTH_BLOCKS = 4
MAX_SEQUENCE_NESTING = 4
SUIT_ALGS = frozenset({cose.ALG_EDDSA, cose.ALG_ES256})
UINT64_MAX = 2**64 - 1

ALG_SHA256 = -16
SHA256_LENGTH = 32
UUID_LENGTH = 16

# Envelope and manifest keys.
ENV_AUTH, ENV_MANIFEST = 2, 3
M_VERSION, M_SEQUENCE, M_COMMON, M_REFERENCE_URI = 1, 2, 3, 4
M_VALIDATE, M_LOAD, M_INVOKE = 7, 8, 9
M_PAYLOAD_FETCH, M_INSTALL, M_TEXT = 16, 20, 23
C_COMPONENTS, C_SHARED_SEQUENCE = 2, 4
SEVERABLE_MEMBERS = (M_PAYLOAD_FETCH, M_INSTALL, M_TEXT)
# Processing order in which command sequences are read for their parameters.
COMMAND_SEQUENCES = (M_PAYLOAD_FETCH, M_INSTALL, M_VALIDATE, M_LOAD, M_INVOKE)

# Conditions and directives (all take a reporting policy unless listed otherwise).
COND_VENDOR, COND_CLASS, COND_IMAGE_MATCH = 1, 2, 3
CONDITIONS = frozenset({1, 2, 3, 5, 6, 14, 24})
DIR_SET_INDEX, DIR_TRY_EACH, DIR_OVERRIDE, DIR_RUN_SEQUENCE = 12, 15, 20, 32
DIR_FETCH, DIR_INVOKE = 21, 23
POLICY_DIRECTIVES = frozenset({18, 21, 22, 23, 31})
SHARED_DIRECTIVES = frozenset({DIR_SET_INDEX, DIR_TRY_EACH, DIR_OVERRIDE, DIR_RUN_SEQUENCE})
REPORT_ALL = 15  # suit-reporting-bits 0..3

# Parameters.
P_VENDOR, P_CLASS, P_IMAGE_DIGEST, P_IMAGE_SIZE, P_URI = 1, 2, 3, 14, 21
#: Our extension (a suit-parameter-custom, nint): bstr .cbor [-16, chunk_size, [* digest]].
P_CHUNK_DIGESTS = -256
_UUID_PARAMETERS = frozenset({P_VENDOR, P_CLASS, 24})
_UINT_PARAMETERS = frozenset({P_IMAGE_SIZE, 5, 22})
_BOOL_PARAMETERS = frozenset({12, 13})
_BSTR_PARAMETERS = frozenset({18, 23, 25})
_CUSTOM_TYPES = (int, bool, str, bytes)

# --- data -----------------------------------------------------------------------------------

ComponentId = tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SuitComponent:
    """What the manifest declares for one component (``None``/empty where absent).

    Attributes:
        component_id: The SUIT_Component_Identifier, a tuple of byte strings.
        vendor_id: Parameter 1 as an RFC 4122 string.
        class_id: Parameter 2 as an RFC 4122 string.
        image_digest: The 32 SHA-256 bytes of parameter 3.
        image_size: Parameter 14.
        uri: Parameter 21.
        chunk_size: Our chunk-digest extension: bytes per chunk.
        chunk_digests: Our extension: SHA-256 of each chunk, in order.
    """

    component_id: ComponentId
    vendor_id: str | None = None
    class_id: str | None = None
    image_digest: bytes | None = None
    image_size: int | None = None
    uri: str | None = None
    chunk_size: int | None = None
    chunk_digests: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SuitManifest:
    """A verified manifest; the image fields are those of component 0.

    Attributes:
        sequence: The manifest sequence number (anti-rollback).
        components: The component ids, in manifest order.
        vendor_id: The vendor id (all components that set one agree).
        class_id: The class id (all components that set one agree).
        image_digest: Component 0's image SHA-256, or ``None``.
        image_size: Component 0's image size, or ``None``.
        uri: Component 0's URI, or ``None``.
        chunk_size: Component 0's chunk size (our extension), or ``None``.
        chunk_digests: Component 0's chunk digests (our extension).
        manifest_digest: SHA-256 of the manifest as a bstr: the signed digest.
        reference_uri: Manifest key 4, or ``None``.
        details: Per-component parameters, in manifest order.
    """

    sequence: int
    components: tuple[ComponentId, ...]
    vendor_id: str | None
    class_id: str | None
    image_digest: bytes | None
    image_size: int | None
    uri: str | None
    chunk_size: int | None
    chunk_digests: tuple[bytes, ...]
    manifest_digest: bytes
    reference_uri: str | None = None
    details: tuple[SuitComponent, ...] = ()

    @property
    def chunk_count(self) -> int:
        """Number of chunks of component 0's image (0 without the extension)."""
        return len(self.chunk_digests)

    def chunk_length(self, index: int) -> int:
        """Expected length of chunk ``index`` (the last one may be shorter).

        Raises:
            SuitChunkMismatch: the manifest declares no chunk digests.
            SuitChunkOutOfRange: ``index`` is not a valid chunk index.
        """
        if self.chunk_size is None or self.image_size is None or not self.chunk_digests:
            raise SuitChunkMismatch("the manifest declares no chunk digests")
        if type(index) is not int or not 0 <= index < len(self.chunk_digests):
            raise SuitChunkOutOfRange(
                f"chunk index {index!r} is outside 0..{len(self.chunk_digests) - 1}"
            )
        return min(self.chunk_size, self.image_size - index * self.chunk_size)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready view (bytes as lowercase hex), e.g. for ``hub firmware inspect``."""
        return {
            "sequence": self.sequence,
            "vendor_id": self.vendor_id,
            "class_id": self.class_id,
            "manifest_digest": self.manifest_digest.hex(),
            "reference_uri": self.reference_uri,
            "components": [_component_json(component) for component in self.details],
        }


def _component_json(component: SuitComponent) -> dict[str, Any]:
    digest = component.image_digest
    return {
        "id": [part.hex() for part in component.component_id],
        "vendor_id": component.vendor_id,
        "class_id": component.class_id,
        "image_digest": None if digest is None else {"alg": "sha-256", "digest": digest.hex()},
        "image_size": component.image_size,
        "uri": component.uri,
        "chunk_size": component.chunk_size,
        "chunk_digests": [chunk.hex() for chunk in component.chunk_digests],
    }


@dataclass(frozen=True, slots=True)
class SuitState:
    """The processor's anti-rollback state: the highest sequence number accepted.

    Attributes:
        highest: The highest accepted sequence number, ``None`` before the first.
    """

    highest: int | None = None

    def accept(self, sequence: int) -> SuitState:
        """Return the state after accepting ``sequence``.

        Raises:
            SuitAlreadyInstalled: ``sequence`` equals :attr:`highest`.
            SuitRollback: ``sequence`` is lower than :attr:`highest`.
        """
        if self.highest is not None:
            if sequence == self.highest:
                raise SuitAlreadyInstalled(f"sequence {sequence} is already installed")
            if sequence < self.highest:
                raise SuitRollback(
                    f"sequence {sequence} is lower than the installed {self.highest}"
                )
        return SuitState(highest=sequence)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """An envelope whose structure was checked but whose manifest is not yet trusted."""

    manifest: bytes
    digest: bytes
    digest_item: bytes
    auth_blocks: tuple[bytes, ...]
    severed: dict[int, bytes]


# --- small readers --------------------------------------------------------------------------


def _decode(data: bytes, what: str, max_size: int, tags: frozenset[int] = frozenset()) -> Any:
    try:
        return cbor.decode(data, max_size=max_size, allowed_tags=tags)
    except DecodeError as exc:
        raise SuitMalformed(f"{what}: {exc}") from exc


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= UINT64_MAX:
        raise SuitMalformed(f"{what} must be an unsigned integer")
    return value


def _bstr(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise SuitMalformed(f"{what} must be a byte string")
    return value


def _map(value: Any, what: str) -> dict[Any, Any]:
    if type(value) is not dict:
        raise SuitMalformed(f"{what} must be a map")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise SuitMalformed(f"{what} must be an array")
    return value


def _only_keys(document: dict[Any, Any], allowed: Iterable[int], what: str) -> None:
    unknown = set(document) - set(allowed)
    if unknown:
        shown = sorted(map(repr, unknown))
        raise SuitMalformed(f"{what}: unsupported members {', '.join(shown)}")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bstr_digest(content: bytes) -> bytes:
    """SHA-256 over the CBOR encoding of ``content`` as a bstr (header included)."""
    return _sha256(cbor.encode(content))


def _suit_digest(value: Any, what: str) -> bytes:
    """Read a decoded SUIT_Digest ``[-16, bstr .size 32]`` and return the digest bytes."""
    items = _list(value, what)
    if len(items) != 2:
        raise SuitMalformed(f"{what} must be [algorithm-id, digest-bytes]")
    if items[0] != ALG_SHA256 or type(items[0]) is not int:
        raise SuitMalformed(f"{what}: only SHA-256 (-16) is supported, not {items[0]!r}")
    digest = _bstr(items[1], f"{what} bytes")
    if len(digest) != SHA256_LENGTH:
        raise SuitMalformed(f"{what}: a SHA-256 digest is {SHA256_LENGTH} bytes")
    return digest


def uuid_text(raw: bytes) -> str:
    """Render 16 bytes as an RFC 4122 string (lowercase, hyphenated)."""
    return str(uuid.UUID(bytes=raw))


# --- envelope -------------------------------------------------------------------------------


def _parse_envelope(data: bytes, max_size: int) -> _Envelope:
    """Steps 1 and 2: size cap, then the envelope and authentication wrapper structure."""
    if not isinstance(data, bytes):
        raise SuitMalformed(f"an envelope must be bytes, not {type(data).__name__}")
    if len(data) > max_size:
        raise PayloadTooLarge(f"envelope of {len(data)} bytes exceeds the {max_size}-byte cap")
    try:
        tag = cbor.leading_tag(data)
    except DecodeError as exc:
        raise SuitMalformed(f"envelope: {exc}") from exc
    if tag != SUIT_ENVELOPE_TAG:
        raise SuitMalformed(f"a SUIT envelope is CBOR tag {SUIT_ENVELOPE_TAG}, not {tag}")
    value = _decode(data, "envelope", max_size, frozenset({SUIT_ENVELOPE_TAG}))
    document = _map(value.value if isinstance(value, cbor.Tag) else value, "envelope")
    return _envelope_members(document, max_size)


def _envelope_members(document: dict[Any, Any], max_size: int) -> _Envelope:
    if any(type(key) is str for key in document):
        raise SuitMalformed("integrated payloads (text keys) are not supported")
    _only_keys(document, (ENV_AUTH, ENV_MANIFEST, *SEVERABLE_MEMBERS), "envelope")
    if ENV_AUTH not in document or ENV_MANIFEST not in document:
        raise SuitMalformed("an envelope needs an authentication wrapper (2) and a manifest (3)")
    manifest = _bstr(document[ENV_MANIFEST], "manifest (3)")
    wrapper = _list(
        _decode(_bstr(document[ENV_AUTH], "authentication wrapper"), "wrapper", max_size),
        "authentication wrapper",
    )
    if not 2 <= len(wrapper) <= 1 + MAX_AUTH_BLOCKS:
        raise SuitMalformed(
            f"the authentication wrapper holds a digest and 1..{MAX_AUTH_BLOCKS} blocks"
        )
    items = [_bstr(item, "authentication wrapper item") for item in wrapper]
    digest = _suit_digest(_decode(items[0], "SUIT_Digest", max_size), "manifest digest")
    severed = {
        key: _bstr(document[key], f"severable member {key}")
        for key in SEVERABLE_MEMBERS
        if key in document
    }
    return _Envelope(manifest, digest, items[0], tuple(items[1:]), severed)


def _check_manifest_digest(envelope: _Envelope) -> None:
    """Step 3: SHA-256 over the manifest as a bstr must equal the wrapper's digest."""
    if not hmac.compare_digest(_bstr_digest(envelope.manifest), envelope.digest):
        raise SuitDigestMismatch("the manifest does not match the authenticated digest")


def _authenticate(envelope: _Envelope, keys: Iterable[cose.CoseKey], max_size: int) -> None:
    """Step 4: one COSE_Sign1 block must verify over the detached bstr(SUIT_Digest)."""
    trusted = list(keys)
    first: CoseError | None = None
    for block in envelope.auth_blocks:
        try:
            cose.verify_sign1(
                block,
                trusted,
                allowed_algs=SUIT_ALGS,
                detached_payload=envelope.digest_item,
                max_size=max_size,
            )
        except CoseError as exc:
            first = first or exc
        except DecodeError as exc:  # the block is not strict CBOR
            first = first or CoseError(f"malformed COSE_Sign1: {exc}")
        else:
            return
    raise first or CoseError("no authentication block")


# --- manifest -------------------------------------------------------------------------------

_MANIFEST_KEYS = (
    M_VERSION,
    M_SEQUENCE,
    M_COMMON,
    M_REFERENCE_URI,
    M_VALIDATE,
    M_LOAD,
    M_INVOKE,
    *SEVERABLE_MEMBERS,
)


def _read_manifest(envelope: _Envelope, max_size: int) -> SuitManifest:
    """Step 5: decode the authenticated manifest and check the severable members."""
    document = _map(_decode(envelope.manifest, "manifest", max_size), "manifest")
    _only_keys(document, _MANIFEST_KEYS, "manifest")
    version = document.get(M_VERSION)
    if type(version) is not int or version != 1:
        raise SuitMalformed(f"unsupported manifest version {version!r} (key 1 must be 1)")
    if M_SEQUENCE not in document or M_COMMON not in document:
        raise SuitMalformed("a manifest needs a sequence number (2) and common (3)")
    sequence = _uint(document[M_SEQUENCE], "sequence number (2)")
    reference_uri = document.get(M_REFERENCE_URI)
    if reference_uri is not None and type(reference_uri) is not str:
        raise SuitMalformed("reference URI (4) must be a text string")
    members = _command_sequences(document, envelope.severed)
    components, shared = _common(document[M_COMMON], max_size)
    walker = _Walker(len(components), max_size)
    if shared is not None:
        walker.run(shared, shared=True)
    for key in COMMAND_SEQUENCES:
        if key in members:
            walker.run(members[key], shared=False)
    details = tuple(walker.component(index, cid) for index, cid in enumerate(components))
    return _assemble(sequence, details, _bstr_digest(envelope.manifest), reference_uri)


def _command_sequences(document: dict[Any, Any], severed: dict[int, bytes]) -> dict[int, bytes]:
    """The command sequences (and text) at hand, severable ones checked against digests."""
    available = {}
    for key in (M_VALIDATE, M_LOAD, M_INVOKE):
        if key in document:
            available[key] = _bstr(document[key], f"command sequence {key}")
    for key in SEVERABLE_MEMBERS:
        member = _severable_member(key, document.get(key), severed.get(key))
        if member is not None:
            available[key] = member
    # suit-text is recipient-unnecessary: its digest is checked, its content never
    # decoded (its component-id map keys are arrays, which strict CBOR refuses).
    available.pop(M_TEXT, None)
    return available


def _severable_member(key: int, in_manifest: Any, in_envelope: bytes | None) -> bytes | None:
    if in_manifest is None:
        if in_envelope is not None:
            raise SuitMalformed(f"the envelope carries member {key} the manifest does not name")
        return None
    if type(in_manifest) is bytes:
        if in_envelope is not None:
            raise SuitMalformed(f"member {key} is both in the manifest and severed")
        return in_manifest
    expected = _suit_digest(in_manifest, f"digest of severable member {key}")
    if in_envelope is None:
        return None  # severed and not supplied: that member is simply unavailable
    if not hmac.compare_digest(_bstr_digest(in_envelope), expected):
        raise SuitDigestMismatch(f"severable member {key} does not match its digest")
    return in_envelope


def _common(value: Any, max_size: int) -> tuple[tuple[ComponentId, ...], bytes | None]:
    common = _map(_decode(_bstr(value, "common (3)"), "common", max_size), "common")
    _only_keys(common, (C_COMPONENTS, C_SHARED_SEQUENCE), "common")
    if C_COMPONENTS not in common:
        raise SuitMalformed("common: components (2) are required")
    components = _components(common[C_COMPONENTS])
    shared = common.get(C_SHARED_SEQUENCE)
    return components, None if shared is None else _bstr(shared, "shared sequence (4)")


def _components(value: Any) -> tuple[ComponentId, ...]:
    items = _list(value, "components")
    if not 1 <= len(items) <= MAX_COMPONENTS:
        raise SuitMalformed(f"a manifest names 1..{MAX_COMPONENTS} components")
    components = tuple(
        tuple(_bstr(part, "component id part") for part in _list(item, "component id"))
        for item in items
    )
    if len(set(components)) != len(components):
        raise SuitMalformed("component ids must be unique")
    return components


def _policy(argument: Any, command: int) -> None:
    if type(argument) is not int or not 0 <= argument <= REPORT_ALL:
        raise SuitMalformed(f"command {command}: the reporting policy must be 0..15")


def _parameter(key: Any, value: Any, max_size: int) -> Any:
    """Check one parameter's type; return its value if we extract it, else ``None``."""
    if type(key) is not int:
        raise SuitMalformed(f"parameter key {key!r} must be an integer")
    if key == P_CHUNK_DIGESTS:
        return _chunk_parameter(value, max_size)
    if key == P_IMAGE_DIGEST:
        digest_item = _bstr(value, "image digest (3)")
        return _suit_digest(_decode(digest_item, "image digest", max_size), "image digest (3)")
    if key in _UUID_PARAMETERS:
        raw = _bstr(value, f"parameter {key}")
        if len(raw) != UUID_LENGTH:
            raise SuitMalformed(f"parameter {key} must be a 16-byte RFC 4122 UUID")
        return uuid_text(raw) if key in (P_VENDOR, P_CLASS) else None
    return _plain_parameter(key, value)


def _plain_parameter(key: int, value: Any) -> Any:
    if key in _UINT_PARAMETERS:
        size = _uint(value, f"parameter {key}")
        return size if key == P_IMAGE_SIZE else None
    if key == P_URI:
        if type(value) is not str or not value:
            raise SuitMalformed("uri (21) must be a non-empty text string")
        return value
    if key in _BOOL_PARAMETERS and type(value) is bool:
        return None
    if key in _BSTR_PARAMETERS and type(value) is bytes:
        return None
    if key < 0 and type(value) in _CUSTOM_TYPES:
        return None  # suit-parameter-custom we do not know: carried, ignored
    raise SuitMalformed(f"unsupported parameter {key} (or wrong type)")


def _chunk_parameter(value: Any, max_size: int) -> tuple[int, tuple[bytes, ...]]:
    """Our extension: bstr .cbor [-16, chunk_size (uint >= 1), [* bstr .size 32]]."""
    what = f"chunk digests ({P_CHUNK_DIGESTS})"
    items = _list(_decode(_bstr(value, what), what, max_size), what)
    if len(items) != 3 or type(items[0]) is not int or items[0] != ALG_SHA256:
        raise SuitMalformed(f"{what} must be [-16, chunk_size, [digests]]")
    chunk_size = _uint(items[1], f"{what} chunk size")
    if chunk_size < 1:
        raise SuitMalformed(f"{what}: the chunk size must be at least 1")
    digests = tuple(_bstr(item, f"{what} entry") for item in _list(items[2], what))
    if any(len(digest) != SHA256_LENGTH for digest in digests):
        raise SuitMalformed(f"{what}: every digest is {SHA256_LENGTH} bytes")
    return chunk_size, digests


class _Walker:
    """Reads command sequences for their parameters, per component, without executing them.

    Every sequence starts at component index 0. Parameters set inside
    ``directive-try-each`` alternatives are checked but not extracted (which one
    applies is only known on the device). A parameter set twice for a component
    must keep its value; otherwise the manifest is refused as ambiguous.
    """

    def __init__(self, count: int, max_size: int) -> None:
        self._count = count
        self._max_size = max_size
        self._params: list[dict[int, Any]] = [{} for _ in range(count)]

    def run(self, data: bytes, *, shared: bool) -> None:
        self._sequence(data, shared=shared, selected=(0,), depth=0, extract=True)

    def component(self, index: int, component_id: ComponentId) -> SuitComponent:
        params = self._params[index]
        chunk_size, chunk_digests = params.get(P_CHUNK_DIGESTS, (None, ()))
        component = SuitComponent(
            component_id=component_id,
            vendor_id=params.get(P_VENDOR),
            class_id=params.get(P_CLASS),
            image_digest=params.get(P_IMAGE_DIGEST),
            image_size=params.get(P_IMAGE_SIZE),
            uri=params.get(P_URI),
            chunk_size=chunk_size,
            chunk_digests=chunk_digests,
        )
        _check_chunks(component)
        return component

    def _sequence(
        self, data: Any, *, shared: bool, selected: tuple[int, ...], depth: int, extract: bool
    ) -> None:
        if depth > MAX_SEQUENCE_NESTING:
            raise SuitMalformed(f"command sequences nest deeper than {MAX_SEQUENCE_NESTING}")
        what = "shared sequence" if shared else "command sequence"
        items = _list(_decode(_bstr(data, what), what, self._max_size), what)
        if not items or len(items) % 2:
            raise SuitMalformed(f"a {what} is a non-empty list of command, argument pairs")
        for command, argument in zip(items[::2], items[1::2], strict=True):
            selected = self._command(
                command, argument, shared=shared, selected=selected, depth=depth, extract=extract
            )

    def _command(
        self,
        command: Any,
        argument: Any,
        *,
        shared: bool,
        selected: tuple[int, ...],
        depth: int,
        extract: bool,
    ) -> tuple[int, ...]:
        if type(command) is not int:
            raise SuitMalformed(f"command {command!r} must be an integer")
        if command in CONDITIONS:
            _policy(argument, command)
            if extract and command in (COND_VENDOR, COND_CLASS):
                self._require(selected, P_VENDOR if command == COND_VENDOR else P_CLASS)
        elif command == DIR_SET_INDEX:
            return self._index(argument)
        elif command == DIR_OVERRIDE:
            self._override(argument, selected, extract)
        elif command == DIR_RUN_SEQUENCE:
            self._sequence(
                argument, shared=shared, selected=selected, depth=depth + 1, extract=extract
            )
        elif command == DIR_TRY_EACH:
            self._try_each(argument, shared, selected, depth)
        elif command in POLICY_DIRECTIVES and not shared:
            _policy(argument, command)
        else:
            where = "the shared sequence" if shared else "a command sequence"
            raise SuitMalformed(f"unsupported command {command} in {where}")
        return selected

    def _index(self, argument: Any) -> tuple[int, ...]:
        if argument is True:
            return tuple(range(self._count))
        indexes = argument if type(argument) is list and argument else [argument]
        for index in indexes:
            if type(index) is not int or not 0 <= index < self._count:
                raise SuitMalformed(f"component index {index!r} is out of range")
        return tuple(indexes)

    def _override(self, argument: Any, selected: tuple[int, ...], extract: bool) -> None:
        params = _map(argument, "override-parameters")
        if not params:
            raise SuitMalformed("override-parameters needs at least one parameter")
        for key, value in params.items():
            extracted = _parameter(key, value, self._max_size)
            if extract and extracted is not None:
                for index in selected:
                    self._set(index, key, extracted)

    def _set(self, index: int, key: int, value: Any) -> None:
        known = self._params[index].get(key)
        if known is not None and known != value:
            raise SuitMalformed(f"component {index}: parameter {key} set to conflicting values")
        self._params[index][key] = value

    def _require(self, selected: tuple[int, ...], key: int) -> None:
        for index in selected:
            if key not in self._params[index]:
                raise SuitMalformed(f"component {index}: a condition checks unset parameter {key}")

    def _try_each(self, argument: Any, shared: bool, selected: tuple[int, ...], depth: int) -> None:
        alternatives = _list(argument, "try-each")
        if alternatives and alternatives[-1] is None:
            alternatives = alternatives[:-1]
        if len(alternatives) < 2:
            raise SuitMalformed("try-each needs at least two alternatives")
        for alternative in alternatives:
            self._sequence(
                alternative, shared=shared, selected=selected, depth=depth + 1, extract=False
            )


def _check_chunks(component: SuitComponent) -> None:
    if component.chunk_size is None:
        return
    if component.image_size is None:
        raise SuitMalformed("chunk digests need an image size (14)")
    expected = -(-component.image_size // component.chunk_size)
    if len(component.chunk_digests) != expected:
        raise SuitMalformed(
            f"{component.image_size} bytes in chunks of {component.chunk_size} make "
            f"{expected} chunks, not {len(component.chunk_digests)}"
        )


def _single(values: Iterable[str | None], what: str) -> str | None:
    distinct = {value for value in values if value is not None}
    if len(distinct) > 1:
        raise SuitMalformed(f"components disagree on the {what}")
    return next(iter(distinct), None)


def _assemble(
    sequence: int,
    details: tuple[SuitComponent, ...],
    manifest_digest: bytes,
    reference_uri: str | None,
) -> SuitManifest:
    first = details[0]
    return SuitManifest(
        sequence=sequence,
        components=tuple(component.component_id for component in details),
        vendor_id=_single((component.vendor_id for component in details), "vendor id"),
        class_id=_single((component.class_id for component in details), "class id"),
        image_digest=first.image_digest,
        image_size=first.image_size,
        uri=first.uri,
        chunk_size=first.chunk_size,
        chunk_digests=first.chunk_digests,
        manifest_digest=manifest_digest,
        reference_uri=reference_uri,
        details=details,
    )


# --- public verification API ----------------------------------------------------------------


def inspect_envelope(
    data: bytes, keys: Iterable[cose.CoseKey], *, max_size: int = MAX_ENVELOPE_SIZE
) -> SuitManifest:
    """Verify an envelope's structure, digest and signature, and return its manifest.

    Does not check the vendor id, class id or sequence number: use
    :func:`verify_envelope` before acting on a manifest.

    Args:
        data: The encoded envelope (CBOR tag 107).
        keys: Trusted keys (EdDSA or ES256); key selection as in ``docs/signing.md``.
        max_size: Size cap, checked before anything is decoded.

    Returns:
        The authenticated manifest.

    Raises:
        PayloadTooLarge: ``data`` exceeds ``max_size``.
        SuitMalformed: the envelope or manifest structure is not accepted.
        SuitDigestMismatch: the manifest or a severable member fails its digest.
        CoseError: the signature step failed (``UnsupportedAlgorithm``,
            ``UnknownKey``, ``SignatureInvalid`` or a malformed COSE_Sign1).
    """
    envelope = _parse_envelope(data, max_size)
    _check_manifest_digest(envelope)
    _authenticate(envelope, keys, max_size)
    return _read_manifest(envelope, max_size)


def check_device(manifest: SuitManifest, *, expected_vendor: str, expected_class: str) -> None:
    """Refuse a manifest that does not name this device's vendor and class ids.

    Args:
        manifest: A manifest returned by :func:`inspect_envelope`.
        expected_vendor: This device's vendor id (any RFC 4122 spelling).
        expected_class: This device's class id (any RFC 4122 spelling).

    Raises:
        SuitWrongDevice: an id is absent from the manifest or differs.
        ValueError: an expected id is not an RFC 4122 UUID (a configuration error).
    """
    for what, declared, expected in (
        ("vendor id", manifest.vendor_id, expected_vendor),
        ("class id", manifest.class_id, expected_class),
    ):
        wanted = _canonical_uuid(expected, what)
        if declared is None:
            raise SuitWrongDevice(f"the manifest declares no {what}")
        if declared != wanted:
            raise SuitWrongDevice(f"the manifest is for {what} {declared}, not {wanted}")


def _canonical_uuid(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"expected {what} {text!r} is not an RFC 4122 UUID") from exc


def verify_envelope(
    data: bytes,
    keys: Iterable[cose.CoseKey],
    *,
    expected_vendor: str,
    expected_class: str,
    state: SuitState,
    max_size: int = MAX_ENVELOPE_SIZE,
) -> tuple[SuitManifest, SuitState]:
    """Verify an envelope for this device and return its manifest and the new state.

    Order: size cap, structure, manifest digest, signature, manifest contents,
    vendor and class ids, anti-rollback. Nothing here touches payload bytes, so
    a wrong device is refused before any byte is downloaded. The caller decides
    when to persist the returned state (e.g. once the install is confirmed).

    Args:
        data: The encoded envelope (CBOR tag 107).
        keys: Trusted keys (EdDSA or ES256).
        expected_vendor: This device's vendor id.
        expected_class: This device's class id.
        state: The current anti-rollback state (not modified).
        max_size: Size cap, checked before anything is decoded.

    Returns:
        The verified manifest and the state with its sequence number accepted.

    Raises:
        SuitWrongDevice: vendor or class id absent or different.
        SuitAlreadyInstalled: the sequence number equals ``state.highest``.
        SuitRollback: the sequence number is lower than ``state.highest``.
        ProtocolError: every failure of :func:`inspect_envelope`.
        ValueError: an expected id is not an RFC 4122 UUID.
    """
    manifest = inspect_envelope(data, keys, max_size=max_size)
    check_device(manifest, expected_vendor=expected_vendor, expected_class=expected_class)
    return manifest, state.accept(manifest.sequence)


def verify_image(manifest: SuitManifest, payload: bytes) -> None:
    """Check a whole payload against component 0's image size and digest.

    Raises:
        SuitImageSize: the payload is larger or smaller than declared.
        SuitImageMismatch: the digest differs, or the manifest declares none.
    """
    if manifest.image_digest is None or manifest.image_size is None:
        raise SuitImageMismatch("the manifest declares no image digest and size")
    if not isinstance(payload, bytes):
        raise SuitImageMismatch("the payload must be bytes")
    if len(payload) != manifest.image_size:
        relation = "larger" if len(payload) > manifest.image_size else "smaller"
        raise SuitImageSize(
            f"payload of {len(payload)} bytes is {relation} than the declared {manifest.image_size}"
        )
    if not hmac.compare_digest(_sha256(payload), manifest.image_digest):
        raise SuitImageMismatch("the payload does not match the image digest")


def verify_chunk(manifest: SuitManifest, index: int, chunk: bytes) -> None:
    """Check one chunk of component 0's image against the signed chunk digests.

    Every chunk is ``chunk_size`` bytes except the last, which holds the rest.

    Raises:
        SuitChunkOutOfRange: ``index`` is not in ``0 .. chunk_count - 1``.
        SuitChunkSize: the chunk is oversize or truncated for its index.
        SuitChunkMismatch: the digest differs, or the manifest declares no chunks.
    """
    expected = manifest.chunk_length(index)
    if not isinstance(chunk, bytes):
        raise SuitChunkMismatch("a chunk must be bytes")
    if len(chunk) != expected:
        relation = "oversize" if len(chunk) > expected else "truncated"
        raise SuitChunkSize(f"chunk {index} is {relation}: {len(chunk)} bytes, not {expected}")
    if not hmac.compare_digest(_sha256(chunk), manifest.chunk_digests[index]):
        raise SuitChunkMismatch(f"chunk {index} does not match its digest")


# --- builder --------------------------------------------------------------------------------

COMPONENT_ID: ComponentId = (b"\x00",)


def build_envelope(
    *,
    sequence: int,
    vendor_id: str,
    class_id: str,
    image: bytes,
    uri: str,
    chunk_size: int,
    kid: bytes,
    sign: Callable[[bytes], bytes],
    alg: int = cose.ALG_EDDSA,
    max_size: int = MAX_ENVELOPE_SIZE,
) -> bytes:
    """Build a signed tag-107 envelope for one image (layout in ``docs/suit.md``).

    Args:
        sequence: The manifest sequence number (uint); must grow with every release.
        vendor_id: The vendor id, an RFC 4122 string.
        class_id: The device class id, an RFC 4122 string.
        image: The payload; its SHA-256, size and chunk digests go in the manifest.
        uri: Where the device fetches the payload (parameter 21, in suit-install).
        chunk_size: Bytes per chunk for the chunk-digest extension (>= 1).
        kid: Key id of the signing key (COSE unprotected header).
        sign: Turns the to-be-signed bytes into a raw 64-byte signature.
        alg: ``ALG_EDDSA`` or ``ALG_ES256``.
        max_size: The envelope must fit the verifier's cap.

    Returns:
        The encoded envelope.

    Raises:
        SuitMalformed: an argument is invalid or the envelope exceeds ``max_size``.
        CoseError: the algorithm is not supported or the signer misbehaved.
    """
    manifest = cbor.encode(
        _manifest_document(
            sequence=sequence,
            vendor_id=vendor_id,
            class_id=class_id,
            image=image,
            uri=uri,
            chunk_size=chunk_size,
        )
    )
    digest_item = cbor.encode([ALG_SHA256, _bstr_digest(manifest)])
    signature = cose.sign1(digest_item, kid=kid, sign=sign, alg=alg, detached=True)
    wrapper = cbor.encode([digest_item, signature])
    envelope = cbor.encode(cbor.Tag(SUIT_ENVELOPE_TAG, {ENV_AUTH: wrapper, ENV_MANIFEST: manifest}))
    if len(envelope) > max_size:
        raise SuitMalformed(
            f"the envelope would be {len(envelope)} bytes, over the {max_size}-byte cap: "
            "use a larger chunk size"
        )
    return envelope


def _manifest_document(
    *, sequence: int, vendor_id: str, class_id: str, image: bytes, uri: str, chunk_size: int
) -> dict[int, Any]:
    _check_build_arguments(sequence, image, uri, chunk_size)
    parameters = {
        P_VENDOR: _build_uuid(vendor_id, "vendor id"),
        P_CLASS: _build_uuid(class_id, "class id"),
        P_IMAGE_DIGEST: cbor.encode([ALG_SHA256, _sha256(image)]),
        P_IMAGE_SIZE: len(image),
        P_CHUNK_DIGESTS: cbor.encode([ALG_SHA256, chunk_size, chunk_digests(image, chunk_size)]),
    }
    shared = [DIR_OVERRIDE, parameters, COND_VENDOR, REPORT_ALL, COND_CLASS, REPORT_ALL]
    install = [DIR_OVERRIDE, {P_URI: uri}, DIR_FETCH, 2, COND_IMAGE_MATCH, REPORT_ALL]
    common = {C_COMPONENTS: [list(COMPONENT_ID)], C_SHARED_SEQUENCE: cbor.encode(shared)}
    return {
        M_VERSION: 1,
        M_SEQUENCE: sequence,
        M_COMMON: cbor.encode(common),
        M_VALIDATE: cbor.encode([COND_IMAGE_MATCH, REPORT_ALL]),
        M_INVOKE: cbor.encode([DIR_INVOKE, 2]),
        M_INSTALL: cbor.encode(install),
    }


def _check_build_arguments(sequence: int, image: bytes, uri: str, chunk_size: int) -> None:
    _uint(sequence, "sequence")
    if not isinstance(image, bytes):
        raise SuitMalformed("the image must be bytes")
    if type(uri) is not str or not uri:
        raise SuitMalformed("the URI must be a non-empty string")
    if type(chunk_size) is not int or chunk_size < 1:
        raise SuitMalformed("the chunk size must be a positive integer")


def _build_uuid(text: str, what: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except (ValueError, TypeError, AttributeError) as exc:
        raise SuitMalformed(f"{what} {text!r} is not an RFC 4122 UUID") from exc


def chunk_digests(image: bytes, chunk_size: int) -> list[bytes]:
    """SHA-256 of each ``chunk_size`` slice of ``image`` (the last may be shorter)."""
    return [
        _sha256(image[start : start + chunk_size]) for start in range(0, len(image), chunk_size)
    ]
