"""Per-room permissions: which rooms an identity may join (and so read, live and from the
history) and which it may publish to.

The grants come with the credentials: a token's `rooms` and `publish` claims, or the same
fields of a signed session, each a list of room names or `fnmatch` patterns (`*`, `?`,
`[abc]`; case-sensitive). `rooms` absent: every room; `publish` absent: the rooms it may join;
neither: every room for both, so credentials issued before permissions existed keep working
(see the README for why that is the default, and how to deny by default instead).

The rule is decided once per connection, at the handshake, by `authorize`: edit it, or pass
your own to `create_app(settings, authorize=...)` (a database lookup, say). It returns the
identity's `Grants`, or None for "every room"; each join and publish then asks the grants, in
time proportional to their patterns, never a lookup per message. A refusal is an error frame
with code `forbidden` (the connection lives on); over HTTP, a 403.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from .identity import Identify, Identity

__all__ = [
    "MAX_PATTERNS",
    "MAX_PATTERN_LENGTH",
    "Authorize",
    "Grants",
    "RoomGrants",
    "RoomPatterns",
    "authorize",
    "authorizing",
    "grants_from_claims",
    "require_join",
    "require_publish",
]

# Per list: a token or a session is carried in every handshake, and a pattern list is compiled
# into one regular expression per distinct grant.
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 128
_MAGIC = re.compile(r"[*?\[]")


class Grants(Protocol):
    """What an identity may do, room by room: `RoomGrants`, or an object of your own."""

    def may_join(self, room: str) -> bool: ...

    def may_publish(self, room: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class RoomPatterns:
    """Room names and glob patterns: names in a set, patterns in one regular expression."""

    names: frozenset[str]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: Iterable[str]) -> RoomPatterns:
        names: set[str] = set()
        globs: list[str] = []
        for item in patterns:
            if _MAGIC.search(item):
                globs.append(item)
            else:
                names.add(item)
        pattern = re.compile("|".join(map(fnmatch.translate, globs))) if globs else None
        return cls(frozenset(names), pattern)

    def __contains__(self, room: object) -> bool:
        if not isinstance(room, str):
            return False
        return room in self.names or (self.pattern is not None and bool(self.pattern.match(room)))


@dataclass(frozen=True, slots=True)
class RoomGrants:
    """The rooms an identity may join and those it may publish to; None: every room."""

    join: RoomPatterns | None = None
    publish: RoomPatterns | None = None

    @classmethod
    def of(
        cls, rooms: Iterable[str] | None = None, publish: Iterable[str] | None = None
    ) -> RoomGrants:
        """Grants from lists of names or patterns; `publish` None: the rooms of `rooms`. The
        same lists give the same (shared) object: one per identity, not one per connection."""
        joins = None if rooms is None else tuple(rooms)
        return _grants(joins, joins if publish is None else tuple(publish))

    def may_join(self, room: str) -> bool:
        return self.join is None or room in self.join

    def may_publish(self, room: str) -> bool:
        return self.publish is None or room in self.publish


@functools.lru_cache(maxsize=1024)
def _grants(rooms: tuple[str, ...] | None, publish: tuple[str, ...] | None) -> RoomGrants:
    return RoomGrants(
        None if rooms is None else RoomPatterns.of(rooms),
        None if publish is None else RoomPatterns.of(publish),
    )


def _pattern_list(claims: Mapping[str, object], name: str) -> tuple[str, ...] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise ValueError(f"{name} must be a list of at most {MAX_PATTERNS} room patterns")
    if not all(isinstance(item, str) and 0 < len(item) <= MAX_PATTERN_LENGTH for item in value):
        raise ValueError(f"{name} must hold strings of 1-{MAX_PATTERN_LENGTH} characters")
    return tuple(value)


def grants_from_claims(claims: Mapping[str, object]) -> RoomGrants | None:
    """The grants of a token's claims or a session's fields (`rooms`, `publish`); None when
    it names neither (every room). ValueError when either is not a list of patterns."""
    rooms, publish = _pattern_list(claims, "rooms"), _pattern_list(claims, "publish")
    if rooms is None and publish is None:
        return None
    return RoomGrants.of(rooms, publish)


def require_join(grants: Grants | None, room: str) -> None:
    """Raise ProtocolError(FORBIDDEN) unless the grants let their holder join `room`."""
    if grants is not None and not grants.may_join(room):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not join room {room!r}")


def require_publish(grants: Grants | None, room: str) -> None:
    """Raise ProtocolError(FORBIDDEN) unless the grants let their holder publish to `room`."""
    if grants is not None and not grants.may_publish(room):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not publish to room {room!r}")


# Called once per handshake (WebSocket, `GET /sse`, `POST /publish`) with the identity the
# credentials proved; it may also raise HandshakeRefused to turn the client away.
Authorize = Callable[["Identity", "HTTPConnection"], Awaitable["Grants | None"]]


async def authorize(identity: Identity, request: HTTPConnection) -> Grants | None:
    """The rule: the grants the credentials carry. Replace it with your own, returning
    `RoomGrants.of(rooms=[...], publish=[...])` (or any `Grants`), or None for every room."""
    return identity.grants


def authorizing(identify: Identify, rule: Authorize = authorize) -> Identify:
    """`identify`, with the identity's grants decided by `rule` (also the default one: it may
    have been edited)."""

    async def identify_and_authorize(request: HTTPConnection) -> Identity:
        identity = await identify(request)
        grants = await rule(identity, request)
        if grants is identity.grants:
            return identity
        return dataclasses.replace(identity, grants=grants)

    return identify_and_authorize
