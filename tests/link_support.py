"""Test helpers for the daemon's MAVLink link: an endpoint on its own UDP socket (the
autopilot, or an attacker pretending to be it) and a daemon listening on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.mavlink import setup_signing

FRAME = LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0)


KEY = bytes(range(7, 39))
def vehicle_heartbeat() -> mav2.MAVLink_heartbeat_message:
    return mav2.MAVLink_heartbeat_message(mav2.MAV_TYPE_QUADROTOR, mav2.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                          0, 0, mav2.MAV_STATE_ACTIVE, 3)


class RawPeer:
    """A MAVLink endpoint on its own UDP socket (so its address is known before it sends):
    the autopilot, or an attacker pretending to be it."""

    def __init__(self, daemon_port: int, key: bytes | None = None, system_id: int = 1,
                 stamp: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.target = ("127.0.0.1", daemon_port)
        self.mav = mav2.MAVLink(None, system_id, 1)
        self.mav.robust_parsing = True
        if key is not None:
            setup_signing(self.mav, key, refuse_unsigned=False)
            if stamp is not None:
                self.mav.signing.timestamp = stamp
        self.got: list[tuple[float, object]] = []

    def send(self, msg) -> None:
        self.sock.sendto(msg.pack(self.mav), self.target)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send(vehicle_heartbeat())
            self.drain()
            time.sleep(0.05)

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            for m in self.mav.parse_buffer(data) or []:
                if m.get_type() != "BAD_DATA":
                    self.got.append((time.monotonic(), m))

    def of(self, kind: str) -> list:
        return [m for _, m in self.got if m.get_type() == kind]

    def gps_times(self) -> np.ndarray:
        """Send times (s) of the GPS_INPUT received: their time_usec, stamped by the daemon
        as it sends (arrival times here would add this process's own scheduling)."""
        return np.array([m.time_usec * 1e-6 for m in self.of("GPS_INPUT")])

    def close(self) -> None:
        self.sock.close()


def make_daemon(port: int, **daemon_keys) -> Daemon:
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link=f"udpin:127.0.0.1:{port}",
                                      link_timeout_s=2.0, **daemon_keys))
    return Daemon(assemble(cfg, None, FRAME, None), LatestFrameQueue(2))
