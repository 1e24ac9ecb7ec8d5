"""The one place the in-flight chain is put together, for every program that flies it.

    build_chain(cfg, pack, camera) -> Chain:
        map pack (+ its encoder) -> Localizer -> Navigator (in a local frame at the pack's
        centre) ; FrameGate ; GnssMonitor -> SendPolicy

The daemon, replay, fleet replay, the emulator and SITL loops, the benchmarks and mount
calibration all build it here, so they localise, refuse frames and decide what to send
in exactly the same way. `Chain.on_frame` is the vision step and `Chain.tick` the send
step; the daemon runs them in its threads, replay in the recorded flight's time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyfix.maps.pack import MapPack
from skyfix.models.registry import encoder_for_id
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate, Frame, GnssSample, Rejection, Telemetry
from skyfix.runtime.flight.gnss import GnssMonitor
from skyfix.runtime.flight.output import FrameGate, SendPolicy, Tick
from skyfix.runtime.io.camera_source import valid_image
from skyfix.runtime.nav.navigator import FrameResult, Localizer, Navigator


@dataclass(frozen=True)
class Step:
    """What one frame gave: its result (a Rejection for refused frames) and the messages
    to send at once (a STATUSTEXT about the camera, or none)."""

    result: FrameResult
    messages: tuple


@dataclass(frozen=True)
class Chain:
    """The in-flight chain over one map pack (its parts hold state; the chain does not)."""

    cfg: Config
    pack: MapPack | None
    frame: LocalFrame
    navigator: Navigator
    gate: FrameGate
    policy: SendPolicy

    def on_frame(self, frame: Frame, now_ns: int, tel: Telemetry | None,
                 gnss: GnssSample | None) -> Step:
        """The vision step: `frame` arriving at clock time `now_ns`, with the telemetry at its
        capture time (None when there is none) and the aircraft's GNSS at that time (used
        as a search prior only while the hand-over still trusts it)."""
        verdict = self.gate.check(frame, now_ns)
        messages = () if verdict.announce is None else (verdict.announce,)
        if not verdict.usable:
            return Step(self._refuse(frame.t_ns, verdict.problem or "repeated",
                                     "frame refused by the frame gate"), messages)
        if not valid_image(frame.image):
            return Step(self._refuse(frame.t_ns, "bad_image", "not an image"), messages)
        if tel is None:
            return Step(self._refuse(frame.t_ns, "no_telemetry", "no telemetry at the frame's "
                                     "time"), messages)
        prior = gnss if self.policy.gnss_trusted() else None
        return Step(self.navigator.on_frame(frame, tel, prior), messages)

    def _refuse(self, t_ns: int, reason: str, detail: str) -> FrameResult:
        self.navigator.rejections[reason] += 1
        return FrameResult(t_ns, Rejection(t_ns, reason, detail), None, "none", 0.0)

    def tick(self, now_ns: int, est: Estimate | None, heard: bool = True) -> Tick:
        """The send step at `now_ns` for `est` (the estimate predicted to `now_ns`)."""
        return self.policy.tick(now_ns, est, heard)

    @property
    def rejections(self) -> Counter[str]:
        return self.navigator.rejections


def open_pack(pack: Path | MapPack) -> tuple[MapPack, LocalFrame]:
    """The pack (opened and verified when given as a path) and the local frame at its centre."""
    pack = pack if isinstance(pack, MapPack) else MapPack.open(Path(pack))
    cx, cy = np.asarray(pack.tile_center_en).mean(0)
    return pack, LocalFrame.at(pack.crs, float(cx), float(cy))


def build_localizer(pack: MapPack, camera: CameraModel, cfg: Config) -> Localizer:
    """The Localizer over `pack` with the encoder the pack was built with."""
    return Localizer(pack, camera, encoder_for_id(pack.manifest.encoder_id, cfg.encoder), cfg)


def build_chain(cfg: Config, pack: Path | MapPack, camera: CameraModel) -> Chain:
    """The whole in-flight chain over the map pack `pack` for a camera `camera`."""
    pack, frame = open_pack(pack)
    return assemble(cfg, pack, frame, build_localizer(pack, camera, cfg))


def assemble(cfg: Config, pack: MapPack | None, frame: LocalFrame,
             localizer: Localizer | None) -> Chain:
    """The chain around a given localizer (None: a chain that is never fed frames, e.g. a
    daemon tested on its MAVLink side alone; the benchmarks pass their own)."""
    gnss = GnssMonitor(cfg.gnss, own_instance=cfg.output.gps_id)
    return Chain(cfg, pack, frame, Navigator(localizer, frame, cfg),
                 FrameGate(cfg.daemon.max_frame_age_s), SendPolicy(cfg, gnss))
