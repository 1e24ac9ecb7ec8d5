"""Messages outside ardupilotmega (GNSS_INTEGRITY) reach the GNSS monitor through the
daemon instead of counting as bad input; their signatures are checked on a signed link."""

from __future__ import annotations

import time

from pymavlink.dialects.v20 import ardupilotmega as mav2
from pymavlink.dialects.v20 import development
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.dialects import decode_other, unknown_id

KEY = bytes(range(32))


def _integrity(spoofing: int, key: bytes | None = None):
    """GNSS_INTEGRITY sent by an autopilot (1, 1), optionally signed with `key`, as the
    daemon's ardupilotmega parser sees it: UNKNOWN_441."""
    tx = development.MAVLink(None, srcSystem=1, srcComponent=1)
    if key is not None:
        tx.signing.secret_key, tx.signing.sign_outgoing = key, True
        tx.signing.timestamp = 1
    buf = development.MAVLink_gnss_integrity_message(
        id=0, system_errors=0, authentication_state=0, jamming_state=1, spoofing_state=spoofing,
        raim_state=0, raim_hfom=0, raim_vfom=0, corrections_quality=255,
        system_status_summary=255, gnss_signal_quality=255, post_processing_quality=255,
    ).pack(tx)
    (msg,) = mav2.MAVLink(None).parse_buffer(buf)
    return msg


def _signing(key: bytes):
    rx = development.MAVLink(None)
    rx.signing.secret_key = key
    return rx.signing


def test_gnss_integrity_is_decoded_from_the_unknown_message():
    msg = _integrity(spoofing=3)
    assert msg.get_type() == "UNKNOWN_441" and unknown_id(msg) == 441
    back = decode_other(msg)
    assert back.get_type() == "GNSS_INTEGRITY" and back.spoofing_state == 3
    assert back.get_srcSystem() == 1 and back.get_srcComponent() == 1


def test_signature_of_an_other_dialect_message_is_checked():
    assert decode_other(_integrity(3, KEY), _signing(KEY)).get_type() == "GNSS_INTEGRITY"
    assert decode_other(_integrity(3, KEY), _signing(bytes(32))) is None  # wrong key
    assert decode_other(_integrity(3), _signing(KEY)) is None  # unsigned on a signed link


def test_daemon_hands_gnss_integrity_to_the_monitor_not_to_the_bad_count():
    cfg = Config()
    daemon = Daemon(assemble(cfg, None, LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0),
                             None), LatestFrameQueue(2))
    now = time.time_ns()
    daemon.on_message(_integrity(spoofing=3), now)
    assert daemon.stats.bad_messages == 0 and daemon.stats.messages == 1
    assert daemon.chain.policy.gnss.raw_state(now) == ("spoofed", "receiver reports spoofing")
    other = mav2.MAVLink_unknown(9999, b"\xfd\x00")  # an id no dialect here knows
    daemon.on_message(other, now)
    assert daemon.stats.bad_messages == 1
