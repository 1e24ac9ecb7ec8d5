"""Map pack from a GNSS-tagged nadir survey (teach and repeat).

    SurveyFrames --SfM with GNSS priors (survey_sfm)--> SurveyModel
    --robust plane through the sparse points, or a DEM (survey_mosaic)--> GroundSurface
    --orthorectify + feathered blend--> OUT.survey/mosaic.tif (UTM, GeoTIFF)
    --maps.build.build_pack--> OUT (the normal map pack, with the SfM's points and their
    descriptors: survey_points.npz)

Beside the pack, in the folder `OUT.survey`, go the mosaic, the refined camera
(camera.yaml, OpenCV FileStorage: replay the repeat flight with `--camera` it) and
report.json: the frames used, the SfM's georeferencing error against the GNSS (camera
centres after the similarity fit), the ground surface and the wall time of each step.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skyfix.maps.build import build_pack
from skyfix.maps.survey_mosaic import fit_plane, grid_for, ground_surface, mosaic
from skyfix.maps.survey_points import SURVEY_POINTS_FILE, SurveyPoints
from skyfix.maps.survey_sfm import SFM_MAX_PX, GeorefError, SurveyFrames, reconstruct
from skyfix.runtime.core.errors import SkyfixError

DEFAULT_GSD_M = 0.25  # mosaic resolution; the pack's levels are this and twice it
REPORT_FORMAT = "skyfix-survey/1"


@dataclass(frozen=True)
class SurveyResult:
    pack: Path
    side: Path  # OUT.survey: mosaic.tif, camera.yaml, report.json
    georef: GeorefError
    wall_s: dict[str, float]


def side_folder(out: Path) -> Path:
    """The folder beside the pack `out` that holds the mosaic, camera and report."""
    return out.parent / f"{out.name}.survey"


def build_survey_pack(frames: SurveyFrames, out: Path, gsd_m: float = DEFAULT_GSD_M,
                      dem: Path | None = None, force: bool = False, threads: int = 2,
                      progress: bool = True) -> SurveyResult:
    """Reconstruct `frames`, mosaic them and build the map pack `out` from the mosaic."""
    out = Path(out)
    if not (0.01 <= gsd_m <= 10.0):
        raise SkyfixError(f"--gsd {gsd_m:g}: expected 0.01..10 m/px")
    if dem is not None and not Path(dem).is_file():
        raise SkyfixError(f"DEM not found: {dem}")
    if out.exists() and not force:
        raise SkyfixError(f"{out} exists (use --force to replace it)")
    side = side_folder(out)
    side.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    model = reconstruct(frames, side / "sfm", threads, progress)
    wall["sfm_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plane = fit_plane(model.points_m)
    a, b, c = plane
    centre = model.points_m[:, :2].mean(axis=0)
    grid = grid_for(model, a * centre[0] + b * centre[1] + c, gsd_m)
    ground = ground_surface(model, grid, plane, dem)
    ortho = mosaic(model, grid, ground, side / "mosaic.tif", progress)
    wall["mosaic_s"] = time.perf_counter() - t0
    model.camera.save(side / "camera.yaml")
    t0 = time.perf_counter()
    # the SfM's points go into the pack: a frame is registered against them in six degrees
    # of freedom (runtime/nav/register3d.py)
    points = SurveyPoints(model.points_m, model.descriptors, model.descriptor_point,
                          SFM_MAX_PX)
    # ragged edges: a survey mosaic is not a rectangle, so tiles may be a quarter imagery
    # the map's own error against the world (its camera centres against the GNSS, 2-D RMS,
    # taken per axis: on the safe side) is claimed by every position flown on it
    build_pack([ortho], out, force=force, progress=progress, min_valid_fraction=0.25,
               georef_sigma_m=model.georef.horizontal_rms_m, survey_points=points)
    wall["pack_s"] = time.perf_counter() - t0
    report = {
        "format": REPORT_FORMAT,
        "pack": str(out),
        "crs": model.crs.to_string(),
        "frames": [str(p) for p in frames.files],
        "registered": [p.file.name for p in model.poses],
        "georef": asdict(model.georef),
        "survey_points": {"points": len(points.xyz_m), "observations": len(points.point),
                          "file": SURVEY_POINTS_FILE},
        "ground": {"source": ground.source, "plane_a_b_c": list(ground.plane),
                   "height_min_m": float(ground.height_m.min()),
                   "height_max_m": float(ground.height_m.max())},
        "mosaic": {"gsd_m": gsd_m, "width": grid.width, "height": grid.height,
                   "file": ortho.name},
        "camera": {"file": "camera.yaml", "fx_px": model.camera.fx, "cx_px": model.camera.cx,
                   "cy_px": model.camera.cy, "k1": model.camera.dist[0]},
        "wall_s": wall,
    }
    (side / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return SurveyResult(out, side, model.georef, wall)
