"""MAVLink 2 signature check that trusts a signing timestamp only after its signature.

pymavlink's own `MAVLink.check_signature` records a new stream's timestamp before it
compares the signature, so one forged packet (any signature, a timestamp near 2^48) on a
stream not yet seen makes every later genuine message on that stream "old" until a
restart. `check_signature` below compares the signature first (in constant time) and
only then applies the replay rules (timestamps per (link id, system, component) stream
must increase; a new stream may start at most one minute behind our clock) and moves
any state. `install` puts it on a pymavlink MAVLink object in place of the method.
`PersistedStamp` keeps our own outgoing timestamp moving forward across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import types
from collections.abc import Callable
from pathlib import Path
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


SAVE_EVERY = 1_000_000  # signing units (10 s of the wall clock) between saves
RESUME_MARGIN = 2 * SAVE_EVERY  # what may have been sent after the last save, and more


class PersistedStamp:
    """Our own signing timestamp kept in the file `path` across restarts: a receiver
    refuses a stream whose timestamps go backwards, and after a restart with the wall
    clock behind (a companion computer without a real-time clock, a clock stepped back)
    they would. `resume()` is where to start: RESUME_MARGIN past the last saved stamp (0
    when there is none); `seen(stamp)` saves about every SAVE_EVERY. A file that cannot
    be read or written costs only this protection: it is logged, never fatal."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path, self._log = path, log
        self._saved = 0
        try:
            text = path.read_text(encoding="ascii").strip() if path.exists() else ""
            self._saved = int(text) if text else 0
            if not 0 <= self._saved < 2**48:
                raise ValueError(f"out of range: {self._saved}")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self._saved = 0
            log(f"signing stamp {path}: unreadable ({exc}); starting from the wall clock")

    def resume(self) -> int:
        return self._saved + RESUME_MARGIN if self._saved else 0

    def seen(self, stamp: int) -> None:
        """The link's signing timestamp after a send: saved when SAVE_EVERY past the last."""
        if stamp < self._saved + SAVE_EVERY:
            return
        self._saved = stamp
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(f"{stamp}\n", encoding="ascii")
            os.replace(tmp, self.path)  # a crash leaves the old file or the new one
        except OSError as exc:
            self._log(f"signing stamp {self.path}: cannot save ({exc})")
