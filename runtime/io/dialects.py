"""Messages outside the ardupilotmega dialect that skyfix reads.

The link is parsed with ardupilotmega (MAVLink 2, pinned in runtime/io/mavlink.py). A
message that dialect does not define arrives as `UNKNOWN_<id>` holding its raw bytes;
some of them matter, e.g. GNSS_INTEGRITY (id 441: jamming, spoofing and RAIM state of a
receiver), which pymavlink 2.4.50 defines only in the development dialect. `decode_other`
decodes such a message with the development dialect, checking its MAVLink 2 signature
with the link's signing state when the link is signed (pymavlink skips the signature
check of messages its dialect does not know).
"""

from __future__ import annotations

from typing import Any

from pymavlink.dialects.v20 import development

# ids that the development dialect decodes and the daemon uses (the GNSS monitor)
OTHER_DIALECT_IDS = frozenset({development.MAVLINK_MSG_ID_GNSS_INTEGRITY})


def unknown_id(msg: Any) -> int | None:
    """The message id of an ardupilotmega `UNKNOWN_<id>` message, else None."""
    kind = msg.get_type()
    if not kind.startswith("UNKNOWN_"):
        return None
    try:
        return int(kind[len("UNKNOWN_"):])
    except ValueError:
        return None


def decode_other(msg: Any, signing: Any | None = None) -> Any | None:
    """`msg` (UNKNOWN_<id>) decoded with the development dialect when its id is one of
    OTHER_DIALECT_IDS and it decodes (CRC and, with `signing` — the link's pymavlink
    MAVLinkSigning holding a key — signature intact); None otherwise."""
    if unknown_id(msg) not in OTHER_DIALECT_IDS:
        return None
    parser = development.MAVLink(None)
    if signing is not None and getattr(signing, "secret_key", None) is not None:
        parser.signing = signing
    try:
        decoded = parser.decode(bytearray(msg.get_msgbuf()))
    except development.MAVError:
        return None
    return None if decoded.get_type() == "BAD_DATA" else decoded
