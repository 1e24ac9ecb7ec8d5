"""Coordinate frames: map CRS <-> local NED <-> WGS84, and attitude rotations.

The map pack's CRS is projected and metric (easting, northing). The filter works
in a local north-east tangent frame about a reference point; over the few
kilometres of one map the map grid and that frame differ by a fixed rotation
(grid convergence) and scale (projection scale factor), which `LocalFrame`
captures as one 2x2 matrix measured at the reference point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.warp import transform as crs_transform

WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")  # every geodesic in skyfix: distances and local offsets


def geodesic_distance_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg) -> np.ndarray:
    """WGS84 ellipsoidal distance in metres between broadcast arrays of points."""
    a = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in
                              (lon1_deg, lat1_deg, lon2_deg, lat2_deg)))
    shape = a[0].shape
    _, _, dist = _GEOD.inv(*(v.ravel() for v in a))
    return np.asarray(dist, np.float64).reshape(shape)


def geodesic_ne_m(lat0_deg, lon0_deg, lat_deg, lon_deg) -> np.ndarray:
    """[..., 2] (north, east) metres of points from reference points along the geodesic
    (distance times the cosine / sine of its azimuth at the reference point)."""
    a = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in
                              (lon0_deg, lat0_deg, lon_deg, lat_deg)))
    shape = a[0].shape
    az, _, dist = _GEOD.inv(*(v.ravel() for v in a))
    az = np.radians(np.asarray(az, np.float64))
    ne = np.stack([np.asarray(dist) * np.cos(az), np.asarray(dist) * np.sin(az)], -1)
    return ne.reshape(*shape, 2)


def R_ned_body(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """[3, 3] rotation of body axes into NED, aerospace Z-Y-X (yaw, pitch, roll) order."""
    cr, sr = np.cos(roll_rad), np.sin(roll_rad)
    cp, sp = np.cos(pitch_rad), np.sin(pitch_rad)
    cy, sy = np.cos(yaw_rad), np.sin(yaw_rad)
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return Rz @ Ry @ Rx


# A downward camera whose image top points to the nose: camera x (right) = body y,
# camera y (down in the image) = -body x, camera z (optical axis) = body z (down).
R_BODY_CAM_NADIR = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
# east-north-up axes -> north-east-down: v_ned = NED_FROM_ENU v_enu (a survey's SfM world
# is east, north, altitude)
NED_FROM_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def mount_rotation(roll_deg: float = 0.0, pitch_deg: float = 0.0,
                   yaw_deg: float = 0.0) -> np.ndarray:
    """[3, 3] R_body_cam of a camera turned by (roll, pitch, yaw) about body axes (Z-Y-X)
    away from the nominal nadir mount R_BODY_CAM_NADIR."""
    return R_ned_body(*np.radians([roll_deg, pitch_deg, yaw_deg])) @ R_BODY_CAM_NADIR


def mean_rotation(Rs: np.ndarray) -> np.ndarray:
    """[3, 3] chordal L2 mean of rotations [N, 3, 3]: the rotation nearest their sum."""
    U, _, Vt = np.linalg.svd(Rs.sum(0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def euler_from_R_ned_body(R: np.ndarray) -> tuple[float, float, float]:
    """(roll, pitch, yaw) in radians of a body-to-NED rotation."""
    pitch = -np.arcsin(np.clip(R[2, 0], -1.0, 1.0))
    roll = np.arctan2(R[2, 1], R[2, 2])
    yaw = np.arctan2(R[1, 0], R[0, 0])
    return float(roll), float(pitch), float(yaw)


@dataclass(frozen=True)
class LocalFrame:
    """Local NED tangent frame at `origin_en` (map CRS metres).

    `J_ned_map`: [2, 2] maps map-grid offsets (dE, dN) to local (north, east) metres.
    """

    crs: CRS
    origin_en: tuple[float, float]
    origin_lat_deg: float
    origin_lon_deg: float
    J_ned_map: np.ndarray

    @classmethod
    def at(cls, crs: CRS, east_m: float, north_m: float) -> LocalFrame:
        d = 50.0
        xs = [east_m, east_m + d, east_m]
        ys = [north_m, north_m, north_m + d]
        lon, lat = crs_transform(crs, WGS84, xs, ys)
        # columns: d(north, east) for a step in easting, then in northing
        ne = geodesic_ne_m(lat[0], lon[0], np.asarray(lat[1:]), np.asarray(lon[1:]))
        return cls(crs, (east_m, north_m), float(lat[0]), float(lon[0]), ne.T / d)

    def map_to_ned(self, east_m: np.ndarray | float, north_m: np.ndarray | float) -> np.ndarray:
        """[..., 2] (north, east) local metres of map points."""
        d = np.stack([np.asarray(east_m) - self.origin_en[0],
                      np.asarray(north_m) - self.origin_en[1]], -1)
        return d @ self.J_ned_map.T

    def ned_to_map(self, north_m: np.ndarray | float, east_m: np.ndarray | float) -> np.ndarray:
        """[..., 2] (easting, northing) map metres of local points."""
        ne = np.stack([np.asarray(north_m), np.asarray(east_m)], -1)
        return ne @ np.linalg.inv(self.J_ned_map).T + np.asarray(self.origin_en)

    def cov_map_to_ned(self, cov_en: np.ndarray) -> np.ndarray:
        return self.J_ned_map @ cov_en @ self.J_ned_map.T

    def ned_to_lla(self, north_m, east_m) -> tuple[np.ndarray, np.ndarray]:
        """(lat_deg, lon_deg) arrays of local points."""
        en = np.atleast_2d(self.ned_to_map(north_m, east_m))
        lon, lat = crs_transform(self.crs, WGS84, en[:, 0].tolist(), en[:, 1].tolist())
        return np.asarray(lat), np.asarray(lon)

    def lla_to_ned(self, lat_deg, lon_deg) -> np.ndarray:
        """[N, 2] (north, east) local metres of geodetic points."""
        x, y = crs_transform(WGS84, self.crs, np.atleast_1d(lon_deg).tolist(),
                             np.atleast_1d(lat_deg).tolist())
        return self.map_to_ned(np.asarray(x), np.asarray(y))

    @property
    def convergence_deg(self) -> float:
        """Grid convergence: the true azimuth of grid north, degrees (positive east). A
        direction at grid azimuth b points at true azimuth b + convergence_deg."""
        dn, de = self.J_ned_map[:, 1]  # a step in northing, in (north, east)
        return float(np.degrees(np.arctan2(de, dn)))

    def lla_to_map(self, lat_deg, lon_deg) -> np.ndarray:
        """[N, 2] (easting, northing) of geodetic points."""
        x, y = crs_transform(WGS84, self.crs, np.atleast_1d(lon_deg).tolist(),
                             np.atleast_1d(lat_deg).tolist())
        return np.stack([np.asarray(x), np.asarray(y)], -1)


def grid_convergence_deg(crs: CRS, east_m: float, north_m: float) -> float:
    """The grid convergence of `crs` at map point (east_m, north_m): see
    LocalFrame.convergence_deg. An attitude about true north (an autopilot's) is one about
    the map grid after its yaw is reduced by it."""
    return LocalFrame.at(crs, float(east_m), float(north_m)).convergence_deg


def skew(a: np.ndarray) -> np.ndarray:
    """[3, 3] cross-product matrix: skew(a) @ b == a x b (in scalars: the IMU filter
    builds one per sample)."""
    x, y, z = np.asarray(a, np.float64).tolist()
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def so3_exp(r: np.ndarray) -> np.ndarray:
    """[3, 3] rotation of the rotation vector `r` [3] (Rodrigues: I + a K + b K^2, K =
    skew(r)); in scalars, as the IMU filter calls it three times per sample."""
    x, y, z = np.asarray(r, np.float64).tolist()
    th2 = x * x + y * y + z * z
    if th2 < 1e-18:
        a, b = 1.0, 0.0
    else:
        th = math.sqrt(th2)
        a, b = math.sin(th) / th, (1.0 - math.cos(th)) / th2
    return np.array([[1.0 - b * (y * y + z * z), b * x * y - a * z, b * x * z + a * y],
                     [b * x * y + a * z, 1.0 - b * (x * x + z * z), b * y * z - a * x],
                     [b * x * z - a * y, b * y * z + a * x, 1.0 - b * (x * x + y * y)]])


def so3_log(R: np.ndarray) -> np.ndarray:
    """[3] rotation vector of a rotation `R` [3, 3] within 90 degrees of the identity,
    from its antisymmetric part (in scalars, as so3_exp)."""
    (_, r01, r02), (r10, _, r12), (r20, r21, _) = np.asarray(R, np.float64).tolist()
    x, y, z = 0.5 * (r21 - r12), 0.5 * (r02 - r20), 0.5 * (r10 - r01)
    s = math.sqrt(x * x + y * y + z * z)
    k = 1.0 if s < 1e-12 else math.asin(min(s, 1.0)) / s
    return np.array([x * k, y * k, z * k])
