"""Six-degree-of-freedom registration against a survey's points (runtime/nav/register3d.py),
on frames rendered from the bundled orthophoto with a known pose: the "survey" is one
nadir photo of it, its SIFT points put on the ground; the frame is taken from elsewhere,
tilted, while the telemetry reports a level camera."""

from __future__ import annotations

import numpy as np
import pytest

from skyfix.maps.survey_points import SurveyPoints
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import MatchConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import NED_FROM_ENU
from skyfix.runtime.core.types import Fix, Rejection, View
from skyfix.runtime.nav.retrieve import NO_PRIOR, Prior

cv2 = pytest.importorskip("cv2")
pycolmap = pytest.importorskip("pycolmap", reason="the survey extra (pip install "
                               "'skyfix[survey]') is not installed")

from skyfix.runtime.nav.register3d import Registrar  # noqa: E402

CAM = CameraModel(640, 480, 500.0, 500.0, 319.5, 239.5)
# a level camera, image top to the north: x east, y south, z down (ENU columns)
NADIR = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def turn(axis: str, deg: float) -> np.ndarray:
    return cv2.Rodrigues(np.radians(deg) * np.eye(3)["xyz".index(axis)])[0]


def render(ortho: np.ndarray, gsd: float, C: np.ndarray, R_world_cam: np.ndarray
           ) -> np.ndarray:
    """The gray frame of CAM at centre C (E, N, up; ground z = 0, E/N from the ortho's
    top-left corner) looking along R_world_cam."""
    u, v = np.meshgrid(np.arange(CAM.width), np.arange(CAM.height))
    rays = np.stack([(u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones(u.shape)], -1)
    w = rays @ R_world_cam.T
    lam = -C[2] / w[..., 2]
    e, n = C[0] + lam * w[..., 0], C[1] + lam * w[..., 1]
    gray = cv2.cvtColor(ortho, cv2.COLOR_BGR2GRAY)
    return cv2.remap(gray, (e / gsd - 0.5).astype(np.float32),
                     (-n / gsd - 0.5).astype(np.float32), cv2.INTER_LINEAR)


def ground_points(px: np.ndarray, C: np.ndarray, R_world_cam: np.ndarray) -> np.ndarray:
    """[K, 3] ground points (z = 0) seen at OpenCV pixels `px` [K, 2]."""
    rays = np.column_stack([(px[:, 0] - CAM.cx) / CAM.fx, (px[:, 1] - CAM.cy) / CAM.fy,
                            np.ones(len(px))]) @ R_world_cam.T
    lam = -C[2] / rays[:, 2]
    return C + lam[:, None] * rays


@pytest.fixture(scope="module")
def scene(ortho):
    """(ortho, gsd, survey points of one nadir photo 60 m over the ortho's centre)."""
    image, transform = ortho
    gsd = float(transform.a)
    half = image.shape[1] * gsd / 2
    C0 = np.array([half, -half, 60.0])
    photo = render(image, gsd, C0, NADIR)
    sift = pycolmap.FeatureExtractor.create(device=pycolmap.Device.cpu)
    kp, desc = sift.extract_from_uint8_array(np.ascontiguousarray(photo))
    xyz = ground_points(np.array([(k.x, k.y) for k in kp]) - 0.5, C0, NADIR)
    points = SurveyPoints(xyz, np.asarray(desc.data, np.uint8),
                          np.arange(len(xyz), dtype=np.int32), CAM.width)
    return image, gsd, points, C0


def view_of(R_ned_cam: np.ndarray, ground_m: float = 0.0, measured: bool = False) -> View:
    return View(t_ns=7, image=np.zeros((4, 4), np.uint8), mask=np.ones((4, 4), bool),
                gsd_m=0.1, origin_px=(2.0, 2.0),
                footprint_m=np.array([[-30.0, 22.0], [30.0, 22.0], [30.0, -22.0],
                                      [-30.0, -22.0]]),
                agl_m=60.0, yaw_rad=0.0, R_ned_cam=R_ned_cam, ground_m=ground_m,
                attitude_measured=measured)


def test_a_tilted_camera_is_placed_and_its_tilt_measured(scene):
    """The frame is 4 m east, 3 m south of the photo, 2 m higher, turned 10 deg and
    tilted 3 deg; the telemetry says level at the right heading: the registration finds
    the centre to a few centimetres and the tilt the telemetry missed."""
    image, gsd, points, C0 = scene
    yaw = turn("z", -10.0)  # a turn about the world's up axis
    R_level = yaw @ NADIR
    R_true = turn("x", 3.0) @ R_level  # tilted about the east axis
    C1 = C0 + np.array([4.0, -3.0, 2.0])
    frame = render(image, gsd, C1, R_true)
    reg = Registrar(points, CAM, MatchConfig())
    fix = reg.register(frame, view_of(NED_FROM_ENU @ R_level), NO_PRIOR)
    assert isinstance(fix, Fix), fix
    assert np.hypot(fix.east_m - C1[0], fix.north_m - C1[1]) < 0.1
    assert abs(fix.agl_m - C1[2]) < 0.2  # over the view's ground (0 m)
    # a turn of 3 deg about east: in NED, about the second axis
    assert fix.tilt_ne_deg[1] == pytest.approx(3.0, abs=0.2)
    assert abs(fix.tilt_ne_deg[0]) < 0.2 and abs(fix.heading_err_deg) < 0.2
    sigma = np.sqrt(np.linalg.eigvalsh(fix.cov_en_m2).max())
    assert 0.5 <= sigma < 1.0  # the floor (match.sigma_floor_m) over a tight fit
    assert fix.inliers >= MatchConfig().min_inliers
    # the level camera the telemetry reports would have put it 60 m x tan 3 deg off:
    # the mosaic route cannot tell that from a shift
    assert 60 * np.tan(np.radians(3)) > 3.0


def test_ground_elsewhere_and_a_prior_elsewhere_give_no_fix(scene):
    image, gsd, points, C0 = scene
    reg = Registrar(points, CAM, MatchConfig())
    far = C0 + np.array([0.0, 200.0, 0.0])  # ground the survey never saw
    other = reg.register(render(image, gsd, far, NADIR), view_of(NED_FROM_ENU @ NADIR),
                         NO_PRIOR)
    assert isinstance(other, Rejection) and other.reason == "few_inliers"
    here = render(image, gsd, C0, NADIR)
    prior = Prior(C0[:2] + [300.0, 0.0], 25.0 * np.eye(2), "filter")
    away = reg.register(here, view_of(NED_FROM_ENU @ NADIR), prior)
    assert isinstance(away, Rejection) and away.reason == "few_inliers"
    near = Prior(C0[:2] + [10.0, 0.0], 25.0 * np.eye(2), "filter")
    assert isinstance(reg.register(here, view_of(NED_FROM_ENU @ NADIR), near), Fix)


def test_a_turn_from_a_measured_heading_is_refused_from_a_stand_in_measured(scene):
    """A measured attitude's heading off by more than match.max_rotation_deg: refused. A
    stand-in (a level camera along the course) knows nothing of the yaw in a turn: the
    registration measures it."""
    image, gsd, points, C0 = scene
    reg = Registrar(points, CAM, MatchConfig(max_rotation_deg=8.0))
    frame = render(image, gsd, C0, turn("z", 20.0) @ NADIR)
    out = reg.register(frame, view_of(NED_FROM_ENU @ NADIR, measured=True), NO_PRIOR)
    assert isinstance(out, Rejection) and out.reason == "heading"
    fix = reg.register(frame, view_of(NED_FROM_ENU @ NADIR), NO_PRIOR)
    assert isinstance(fix, Fix) and fix.heading_err_deg == pytest.approx(-20.0, abs=0.3)


def test_a_frame_of_another_size_than_the_camera_is_refused_not_registered(scene):
    image, gsd, points, C0 = scene
    frame = render(image, gsd, C0, NADIR)
    out = Registrar(points, CAM, MatchConfig()).register(
        frame[:240], view_of(NED_FROM_ENU @ NADIR), NO_PRIOR)
    assert isinstance(out, Rejection) and out.reason == "no_view" and "640x480" in out.detail


def test_survey_points_round_trip_and_bad_files(tmp_path, scene):
    points = scene[2]
    path = tmp_path / "survey_points.npz"
    points.save(path)
    back = SurveyPoints.load(path)
    assert np.array_equal(back.xyz_m, points.xyz_m)
    assert np.array_equal(back.descriptors, points.descriptors)
    assert back.sift_max_px == points.sift_max_px
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(SkyfixError, match="not readable survey points") as exc:
        SurveyPoints.load(path)
    assert "\n" not in str(exc.value)
    SurveyPoints(points.xyz_m, points.descriptors, points.point + len(points.xyz_m),
                 640).save(path)  # descriptors of points that are not there
    with pytest.raises(SkyfixError, match="inconsistent"):
        SurveyPoints.load(path)


def test_a_pack_carries_the_points_under_its_manifest(tmp_path, scene, ortho_path):
    """`build_pack(..., survey_points=)` keeps them in the pack, hashed in its manifest: a
    changed file is refused like any other pack file; a pack without them has none."""
    import rasterio

    from skyfix.maps.build import build_pack
    from skyfix.maps.pack import MapPack
    from skyfix.maps.survey_points import SURVEY_POINTS_FILE
    from skyfix.models.features import RootSiftEncoder

    points = scene[2]
    with rasterio.open(ortho_path) as src:  # a crop around the photo, for a quick build
        win = rasterio.windows.Window(533, 533, 600, 600)
        profile = dict(driver="GTiff", width=600, height=600, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win))
        data, t = src.read(window=win), src.transform
    with rasterio.open(tmp_path / "crop.tif", "w", **profile) as out:
        out.write(data)
    in_crs = SurveyPoints(points.xyz_m + [t.c, t.f, 0.0], points.descriptors, points.point,
                          points.sift_max_px)
    pack = build_pack([tmp_path / "crop.tif"], tmp_path / "pack", RootSiftEncoder(),
                      tile_px=256, progress=False, survey_points=in_crs)
    opened = MapPack.open(pack)
    assert opened.survey_points_file == pack / SURVEY_POINTS_FILE
    assert np.array_equal(SurveyPoints.load(opened.survey_points_file).xyz_m, in_crs.xyz_m)
    plain = build_pack([tmp_path / "crop.tif"], tmp_path / "plain", RootSiftEncoder(),
                       tile_px=256, progress=False)
    assert MapPack.open(plain).survey_points_file is None
    SurveyPoints(in_crs.xyz_m + [1.0, 0.0, 0.0], in_crs.descriptors, in_crs.point,
                 in_crs.sift_max_px).save(pack / SURVEY_POINTS_FILE)  # moved by a metre
    with pytest.raises(SkyfixError, match=f"{SURVEY_POINTS_FILE} does not match its manifest"):
        MapPack.open(pack)
