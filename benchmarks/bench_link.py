"""The daemon's link under a flood of UDP senders: GPS_INPUT rate and largest gap to the
autopilot while another process sends from thousands of new source ports (JSON).

    python benchmarks/bench_link.py --out out/bench/link.json [--seconds 5]

The daemon runs with a fresh filter (a fix held for the run) on udpin:127.0.0.1; the
autopilot is a plain UDP socket sending a vehicle HEARTBEAT every 50 ms; the flooder sends
a HEARTBEAT and a garbage datagram from each of 50 new sockets every 5 ms. Gaps are
measured on the daemon's own send stamps (GPS_INPUT time_usec).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.sim.closed_loop import free_udp_port

FLOOD = """
import socket, sys, time
port, seconds, junk = int(sys.argv[1]), float(sys.argv[2]), bytes.fromhex(sys.argv[3])
end, sent = time.monotonic() + seconds, 0
while time.monotonic() < end:
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(junk, ("127.0.0.1", port))
        s.sendto(b"\\xfd\\x09garbage", ("127.0.0.1", port))
        s.close()
        sent += 2
    time.sleep(0.005)
print(sent)
"""


def heartbeat() -> bytes:
    msg = mav2.MAVLink_heartbeat_message(mav2.MAV_TYPE_QUADROTOR,
                                         mav2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4, 3)
    return msg.pack(mav2.MAVLink(None, 1, 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/link.json"))
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    port = free_udp_port()
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link=f"udpin:127.0.0.1:{port}"))
    daemon = Daemon(assemble(cfg, None, LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0),
                             None), LatestFrameQueue(2))
    now = time.time_ns()
    daemon.nav.filter.initialize(now, np.zeros(2), np.eye(2), np.zeros(2), np.eye(2) * 0.1)
    daemon.nav.last_fix_t_ns = now + int((a.seconds + 60) * 1e9)
    daemon.publish()
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    ap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ap.bind(("127.0.0.1", 0))
    ap.setblocking(False)
    parser, stamps = mav2.MAVLink(None, 1, 1), []

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ap.sendto(heartbeat(), ("127.0.0.1", port))
            while True:
                try:
                    data = ap.recv(65535)
                except BlockingIOError:
                    break
                stamps.extend(m.time_usec * 1e-6 for m in parser.parse_buffer(data) or []
                              if m.get_type() == "GPS_INPUT")
            time.sleep(0.05)

    pump(0.5)
    before = len(stamps)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(a.seconds),
                              heartbeat().hex()], stdout=subprocess.PIPE, text=True)
    pump(a.seconds)
    sent = int(flood.communicate(timeout=60)[0])
    stop.set()
    runner.join(15.0)
    t = np.array(stamps[before:])
    result = {
        "flood_seconds": a.seconds, "flood_datagrams": sent,
        "gps_input_during_flood": len(t),
        "gps_input_rate_hz": float((len(t) - 1) / (t[-1] - t[0])) if len(t) > 1 else 0.0,
        "gps_input_max_gap_ms": float(np.diff(t).max() * 1e3) if len(t) > 1 else None,
        "daemon_alive_until_stopped": not daemon._failure,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="bench_link"))
