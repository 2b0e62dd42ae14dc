"""Semantic versions (https://semver.org, 2.0.0): parsing and precedence. Pure.

Build metadata (``+...``) is kept in the text but ignored for precedence, as
the specification says; two versions differing only in build metadata are
therefore *equal* here, and the catalogue refuses the second as not newer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from hub.firmware.errors import InvalidVersion

MAX_VERSION_LENGTH = 64

# The regular expression suggested by semver.org, anchored.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    """A parsed semantic version; ordering is semver precedence."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after all its pre-releases; numeric identifiers sort
        # numerically and before alphanumeric ones.
        pre = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def parse_version(text: str) -> Version:
    """Parse ``text`` as a semantic version.

    Raises:
        InvalidVersion: not a semantic version, or longer than 64 characters.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_VERSION_LENGTH:
        raise InvalidVersion(f"a version is 1..{MAX_VERSION_LENGTH} characters")
    match = _SEMVER.fullmatch(text)
    if match is None:
        raise InvalidVersion(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre, build = match.groups()
    return Version(
        major=int(major),
        minor=int(minor),
        patch=int(patch),
        prerelease=tuple(pre.split(".")) if pre else (),
        build=build or "",
    )
