"""The live MAVLink link's UDP server end, answering the autopilot alone.

pymavlink's UDP server (`udpin:`) adds every address a datagram came from to a set and
writes each message to all of them: anyone who can reach the port receives the position
stream, thousands of senders slow every write, and a write racing a new sender fails
with "Set changed size during iteration". `AutopilotUDP` keeps one peer instead: the
configured address, or else the first address from which the autopilot (`system_id`)
sends a valid HEARTBEAT of a vehicle (signed, when signing is on). Until then nothing is
written; once it is known, datagrams from other addresses are dropped unread (counted in
`foreign_datagrams`). A learned peer lasts as long as the connection: the daemon opens a
new one after `daemon.link_timeout_s` of silence from it.

Each datagram is parsed on its own: bytes a datagram leaves unfinished are dropped, so a
message is never completed by another sender's datagram.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque

from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.errors import SkyfixError

log = logging.getLogger("skyfix.link")

_NETWORK_PREFIXES = ("udpin:", "udpout:", "udpbcast:", "udp:", "tcp:", "tcpin:")


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """(host, port) of "host:port"; a SkyfixError naming `what` when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.strip().isdigit() or not 0 <= int(port) <= 65535:
        raise SkyfixError(f"{what} {text!r} must be host:port with a port 0..65535")
    return host, int(port)


def check_link_spec(spec: str) -> None:
    """Refuse a network link string whose address part is not host:port (one line)."""
    for prefix in _NETWORK_PREFIXES:
        if spec.startswith(prefix):
            parse_host_port(spec[len(prefix):], f"link {spec!r}: address")
            return


def vehicle_heartbeat(msg, system_id: int, signed: bool) -> bool:
    """Whether `msg` is a HEARTBEAT of the vehicle `system_id` (not a ground station,
    gimbal or companion), signed when `signed`."""
    return (msg.get_type() == "HEARTBEAT" and msg.get_srcSystem() == system_id
            and msg.autopilot != mavlink2.MAV_AUTOPILOT_INVALID
            and msg.type not in (mavlink2.MAV_TYPE_GCS, mavlink2.MAV_TYPE_ONBOARD_CONTROLLER,
                                 mavlink2.MAV_TYPE_GIMBAL, mavlink2.MAV_TYPE_ADSB)
            and (msg.get_signed() or not signed))


class AutopilotUDP(mavutil.mavudp):
    """A UDP server link (`udpin:host:port`) that talks to one peer (see module doc).

    `peer`: "host:port" of the autopilot, or None to take it from its first HEARTBEAT.
    `system_id`: the autopilot's MAVLink system id. `signed`: only a signed HEARTBEAT
    may name the peer (set when the link checks signatures)."""

    def __init__(self, address: str, system_id: int, peer: str | None = None,
                 signed: bool = False, source_system: int = 255,
                 source_component: int = 0) -> None:
        host, port = parse_host_port(address, "UDP listen address")
        super().__init__(f"{host}:{port}", input=True, source_system=source_system,
                         source_component=source_component)
        self.system_id = system_id
        self.signed = signed
        self.peer: tuple[str, int] | None = None
        if peer is not None:
            host, port = parse_host_port(peer, "autopilot peer")
            try:
                self.peer = (socket.gethostbyname(host), port)
            except OSError as exc:
                raise SkyfixError(f"autopilot peer {peer!r}: unknown host ({exc})") from None
        self._pending: deque = deque()
        self.foreign_datagrams = 0  # datagrams from other addresses, dropped unread
        self.unsent = 0  # messages not written because no peer is known yet

    @property
    def ready(self) -> bool:
        """Whether the peer is known (what is written now reaches it)."""
        return self.peer is not None

    def recv_msg(self):
        """The next message from the peer (or, before it is known, from anyone); None
        when no datagram is waiting."""
        if not self._pending:
            try:
                data, addr = self.port.recvfrom(mavutil.UDP_MAX_PACKET_LEN)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    return None
                raise
            if self.peer is not None and addr != self.peer:
                self.foreign_datagrams += 1
                return None
            msgs = self.mav.parse_buffer(data) or []
            if self.mav.buf_len():  # an unfinished message: never let another datagram end it
                self.mav.buf, self.mav.buf_index = bytearray(), 0
                self.mav.expected_length = mavlink2.HEADER_LEN_V1 + 2
            for msg in msgs:
                self._pending.append((msg, addr))
            if not self._pending:
                return None
        msg, addr = self._pending.popleft()
        if self.peer is None and vehicle_heartbeat(msg, self.system_id, self.signed):
            self.peer = addr
            log.info("autopilot (system %d) at %s:%d", self.system_id, *addr)
        self.post_message(msg)
        return msg

    def write(self, buf) -> None:
        """Send `buf` to the peer only; nothing (counted in `unsent`) before it is known."""
        peer = self.peer
        if peer is None:
            self.unsent += 1
            return
        self.port.sendto(buf, peer)
