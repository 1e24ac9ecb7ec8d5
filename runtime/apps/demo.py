"""`skyfix demo`: a synthetic flight over the bundled Vienna orthophoto, a map pack
built from the same orthophoto, and a replay of the flight against the pack, from
the pixels alone (GNSS off from the first frame)."""

from __future__ import annotations

import shutil
from pathlib import Path

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import ReplayResult, replay
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

DEMO_FLIGHT = FlightSpec(agl_m=120.0, duration_s=60.0, seed=1)


def run_demo(out: Path, spec: FlightSpec = DEMO_FLIGHT, progress: bool = True) -> ReplayResult:
    ortho = sample_ortho()
    for sub in ("flight", "pack"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    print(f"1/3 simulating a {spec.duration_s:.0f} s flight at {spec.agl_m:.0f} m above ground"
          f" over {ortho.name}")
    simulate_flight(ortho, out / "flight", spec, progress=progress)
    print("2/3 building the map pack")
    build_pack([ortho], out / "pack", progress=progress)
    print("3/3 replaying the flight against the pack (no GNSS)")
    return replay(out / "flight", out / "pack", out / "replay", Config(), 0.0, progress=progress)
