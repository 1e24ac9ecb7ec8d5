"""The one place the in-flight chain is put together, for every program that flies it.

    build_chain(cfg, pack, camera) -> Chain:
        map pack (plain or sharded) + its encoder (both signature-checked when a key is
        trusted)
        -> Localizer -> Navigator (in a local frame at the pack's centre) ;
        FrameGate ; GnssMonitor -> SendPolicy

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
from threadpoolctl import threadpool_limits

from skyfix.maps.tilemap import TileMap
from skyfix.maps.trusted import open_pack_and_encoder
from skyfix.models.features import Encoder
from skyfix.models.registry import encoder_for_id
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate, Fix, Frame, GnssSample, Rejection, Telemetry
from skyfix.runtime.flight.aids import OutputAids
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
    pack: TileMap | None
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
        result = self.navigator.on_frame(frame, tel, prior)
        fix, innovation = result.result, result.innovation
        if isinstance(fix, Fix) and innovation is not None and innovation.accepted:
            self.policy.aids.on_fix(fix.t_ns,  # altitude, count (the yaw: navigator.heading)
                                    fix.alt_amsl_m - tel.alt_amsl_m, fix.alt_sigma_m)
        return Step(result, messages)

    def _refuse(self, t_ns: int, reason: str, detail: str) -> FrameResult:
        self.navigator.rejections[reason] += 1
        return FrameResult(t_ns, Rejection(t_ns, reason, detail), None, "none", 0.0)

    def tick(self, now_ns: int, est: Estimate | None, heard: bool = True,
             heading_deg: float | None = None) -> Tick:
        """The send step at `now_ns` for `est` (the estimate predicted to `now_ns`) and the
        autopilot's heading `heading_deg` then."""
        return self.policy.tick(now_ns, est, heard, heading_deg)

    @property
    def rejections(self) -> Counter[str]:
        return self.navigator.rejections


def local_frame(pack: TileMap) -> LocalFrame:
    """The local NED frame every program flies in: at the centre of the pack's tiles."""
    cx, cy = np.asarray(pack.centre_en, np.float64)
    return LocalFrame.at(pack.crs, float(cx), float(cy))


def open_map(pack: Path | TileMap, cfg: Config) -> tuple[TileMap, Encoder, LocalFrame]:
    """The pack, plain or sharded (opened, verified and, with trust.public_key set,
    signature-checked when given as a path), the encoder it was built with, and the local
    frame at its centre."""
    if isinstance(pack, TileMap):
        encoder = encoder_for_id(pack.encoder_id, cfg.encoder, cfg.rectify.max_view_px)
    else:
        pack, encoder = open_pack_and_encoder(Path(pack), cfg)
    return pack, encoder, local_frame(pack)


def build_chain(cfg: Config, pack: Path | TileMap, camera: CameraModel) -> Chain:
    """The whole in-flight chain over the map pack `pack` for a camera `camera`; numpy's
    BLAS is held to `daemon.blas_threads` from then on, for the whole process."""
    if cfg.daemon.blas_threads:
        threadpool_limits(cfg.daemon.blas_threads, user_api="blas")
    pack, encoder, frame = open_map(pack, cfg)
    return assemble(cfg, pack, frame, Localizer(pack, camera, encoder, cfg))


def assemble(cfg: Config, pack: TileMap | None, frame: LocalFrame,
             localizer: Localizer | None) -> Chain:
    """The chain around a given localizer (None: a chain that is never fed frames, e.g. a
    daemon tested on its MAVLink side alone; the benchmarks pass their own)."""
    gnss = GnssMonitor(cfg.gnss, own_instance=cfg.output.gps_id)
    navigator = Navigator(localizer, frame, cfg)
    aids = OutputAids(cfg.output.lock_budget_s, cfg.output.satellites, navigator.heading,
                      navigator.map_sigma_m)
    return Chain(cfg, pack, frame, navigator,
                 FrameGate(cfg.daemon.max_frame_age_s), SendPolicy(cfg, gnss, aids))
