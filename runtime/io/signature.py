"""MAVLink 2 signature check that trusts a signing timestamp only after its signature.

pymavlink's own `MAVLink.check_signature` records a new stream's timestamp before it
compares the signature, so one forged packet (any signature, a timestamp near 2^48) on a
stream not yet seen makes every later genuine message on that stream "old" until a
restart. `check_signature` below compares the signature first (in constant time) and
only then applies the replay rules (timestamps per (link id, system, component) stream
must increase; a new stream may start at most one minute behind our clock) and moves
any state. `install` puts it on a pymavlink MAVLink object in place of the method.
"""

from __future__ import annotations

import hashlib
import hmac
import types
from typing import Any

_NEW_STREAM_SLACK = 6_000_000  # 1 min in signing units (10 us): how far a new stream may lag
_SIGNATURE_BYTES = 6
_TIMESTAMP_BYTES = 6


def signature_ok(secret_key: bytes, msgbuf: bytes | bytearray) -> bool:
    """Whether the last 6 bytes of the signed MAVLink 2 frame `msgbuf` are the first 6
    bytes of sha256(key + everything before them)."""
    if len(msgbuf) < 1 + _TIMESTAMP_BYTES + _SIGNATURE_BYTES:
        return False
    digest = hashlib.sha256(bytes(secret_key) + bytes(msgbuf[:-_SIGNATURE_BYTES])).digest()
    return hmac.compare_digest(digest[:_SIGNATURE_BYTES], bytes(msgbuf[-_SIGNATURE_BYTES:]))


def check_signature(mav: Any, msgbuf: bytearray, src_system: int, src_component: int) -> bool:
    """True when the signed frame `msgbuf` from (src_system, src_component) carries a valid
    signature with a fresh timestamp; only then are the stream's timestamp and our own
    signing clock moved forward. Same contract as pymavlink's method of that name."""
    signing = mav.signing
    if signing.secret_key is None or not signature_ok(signing.secret_key, msgbuf):
        return False
    stamp = int.from_bytes(bytes(msgbuf[-12:-6]), "little")
    stream = (msgbuf[-13], src_system, src_component)
    last = signing.stream_timestamps.get(stream)
    if last is not None and stamp <= last:
        return False  # replayed or reordered
    if last is None and stamp + _NEW_STREAM_SLACK < signing.timestamp:
        return False  # a new stream starting far in the past: a recording
    signing.stream_timestamps[stream] = stamp
    signing.timestamp = max(signing.timestamp, stamp)
    return True


def install(mav: Any) -> None:
    """Make the pymavlink MAVLink object `mav` check signatures with `check_signature`."""
    mav.check_signature = types.MethodType(check_signature, mav)
