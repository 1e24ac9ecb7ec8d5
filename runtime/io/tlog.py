"""MAVLink telemetry logs (.tlog): each record is a big-endian uint64 Unix time in
microseconds followed by one packed MAVLink message, the format MAVProxy writes
and `pymavlink.mavutil.mavlink_connection(path)` / MAVExplorer read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from pymavlink.dialects.v20 import ardupilotmega as mavlink2


class TlogWriter:
    """Packs messages as MAVLink 2 from one (system, component) and writes them with times."""

    def __init__(self, path: Path, system_id: int, component_id: int) -> None:
        self._file: BinaryIO = open(path, "wb")
        self.mav = mavlink2.MAVLink(None, srcSystem=system_id, srcComponent=component_id)
        self.mav.robust_parsing = True

    def write(self, msg: mavlink2.MAVLink_message, t_ns: int) -> bytes:
        """Pack `msg` (sequence number and CRC included) and append it stamped with `t_ns`."""
        buf = msg.pack(self.mav)
        self.mav.seq = (self.mav.seq + 1) % 256
        self._file.write(struct.pack(">Q", t_ns // 1000) + buf)
        return buf

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TlogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
