"""Replay a recorded flight through the runtime as if live.

The flight comes as `ReplayInputs` (sources.open_inputs: a sim flight folder, an image
folder or a video, with a tlog/.bin/.ulg/track CSV or the photos' own EXIF/XMP).
Frames and telemetry are fed in time order. The recorded GNSS is used as a search
prior only before `gnss_off_at_s` (seconds after the first frame; 0 = never), and
otherwise only to score. Between frames the filter's estimate is sent at the
configured rate, predicted to each send time, exactly as the daemon would send it,
and recorded as GPS_INPUT messages in OUT/gps_input.tlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyfix.maps.trusted import open_pack_and_encoder
from skyfix.runtime.apps.report import Report, SentEstimate, write_outputs
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Rejection
from skyfix.runtime.io.mavlink import GpsInputRecorder, fix_type_for
from skyfix.runtime.io.sources import ReplayInputs, open_inputs
from skyfix.runtime.nav.navigator import FrameResult, Localizer, Navigator

MAX_GAP_S = 30.0  # beyond the lock budget, a gap between frames is recorded this long at most


@dataclass(frozen=True)
class ReplayResult:
    report: Report
    files: tuple[Path, ...]


def replay(flight: Path | ReplayInputs, pack_path: Path, out: Path, cfg: Config,
           gnss_off_at_s: float = 0.0, progress: bool = True) -> ReplayResult:
    """Replay `flight` (a recorded-flight folder, or inputs from `open_inputs`)."""
    inputs = flight if isinstance(flight, ReplayInputs) else open_inputs(Path(flight))
    telemetry = inputs.telemetry
    pack, encoder = open_pack_and_encoder(Path(pack_path), cfg)  # signatures when trusted
    cx, cy = np.asarray(pack.tile_center_en).mean(0)
    frame = LocalFrame.at(pack.crs, float(cx), float(cy))
    nav = Navigator(Localizer(pack, inputs.camera, encoder, cfg), frame, cfg)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = int(inputs.frames.frame_times_ns[0])
    step_ns = int(1e9 / cfg.filter.rate_hz)
    next_send = t0
    results: list[FrameResult] = []
    sent: list[SentEstimate] = []
    alt = float("nan")
    with GpsInputRecorder(out / "gps_input.tlog", cfg.output) as recorder:
        for item in tqdm(inputs.frames.frames(), total=len(inputs.frames.frame_times_ns),
                         desc="replay", unit="frame", disable=not progress):
            t = item.t_ns if not isinstance(item, tuple) else item[1]
            # Send what the autopilot would have received up to this frame's capture; of a
            # long gap (a frame stamped hours late, say) only the first MAX_GAP_S: the rest
            # would repeat "no fix" and grow the log without bound.
            gap_end = next_send + int((cfg.output.lock_budget_s + MAX_GAP_S) * 1e9)
            while next_send < t:
                if next_send >= gap_end:
                    next_send += -(-(t - next_send) // step_ns) * step_ns  # first slot >= t
                    break
                _send(nav, recorder, next_send, alt, sent, cfg)
                next_send += step_ns
            if isinstance(item, tuple):
                results.append(FrameResult(t, Rejection(t, "no_view", item[2]), None, "none", 0.0))
                continue
            tel = telemetry.at(t)
            if tel is None:
                results.append(FrameResult(t, Rejection(t, "no_view", "no telemetry"), None,
                                           "none", 0.0))
                continue
            alt = tel.alt_amsl_m
            gnss = telemetry.gnss_at(t) if (t - t0) * 1e-9 < gnss_off_at_s else None
            results.append(nav.on_frame(item, tel, gnss))
        _send(nav, recorder, next_send, alt, sent, cfg)

    if not results:
        raise SkyfixError(f"{inputs.name}: no frames to replay")
    report, files = write_outputs(out, pack, frame, inputs.truth, results, sent,
                                  dict(nav.rejections), inputs.reference)
    return ReplayResult(report, files)


def _send(nav: Navigator, recorder: GpsInputRecorder, t_ns: int, alt: float,
          sent: list[SentEstimate], cfg: Config) -> None:
    est = nav.estimate(t_ns, alt)
    if est is None:
        return
    recorder.send(est, t_ns)
    sent.append(SentEstimate(t_ns, est, fix_type_for(est, cfg.output)))
