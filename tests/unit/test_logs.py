"""Flight-log readers (DataFlash .bin, PX4 .ulg, GPS track CSV, EXIF + DJI XMP) on real
files: the shared recordings (skipped without ../shared/data), truncated copies of them,
and JPEGs written with real EXIF/XMP blocks."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import shared_file
from PIL import Image

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, R_ned_body
from skyfix.runtime.io.logs import (
    _gimbal_as_body,
    read_image_meta,
    read_telemetry,
    telemetry_from_images,
)


def _sane(log, lat0: float, lon0: float, radius_m: float) -> None:
    for arr in (log.att, log.pos, log.gnss):
        assert len(arr) and (np.diff(arr[:, 0]) >= 0).all()  # time-sorted
    assert (np.abs(log.att[:, 1]) <= np.pi + 1e-6).all()
    assert (np.abs(log.att[:, 2]) <= np.pi / 2 + 1e-6).all()
    d_m = np.hypot((log.pos[:, 1] - lat0) * 111_320,
                   (log.pos[:, 2] - lon0) * 111_320 * np.cos(np.radians(lat0)))
    assert d_m.max() < radius_m
    assert (log.gnss[:, 4] >= 2).all() and np.isfinite(log.gnss[:, 1:3]).all()


def test_ardupilot_dataflash_bin():
    log = read_telemetry(shared_file("flight_logs/dronekit-la-testdata_log171.bin"))
    _sane(log, -35.362, 149.166, 300.0)  # CMAC, a short low flight
    assert len(log.att) > 2000 and len(log.gnss) > 1000
    assert datetime.fromtimestamp(log.gnss[0, 0] * 1e-9, timezone.utc).year == 2015
    assert log.pos[:, 4].max() < 20.0  # baro max ~12 m above home
    assert (log.gnss[:, 5] >= 4).all()  # satellites
    assert log.attitude_measured and log.at(int(log.att[100, 0])).attitude_measured


@pytest.mark.parametrize("name, lat0, lon0, year", [
    ("pyulog_sample_log_small.ulg", 63.417, 10.408, 2021),
    ("pyulog_sample_px4_events_SITL.ulg", 47.3977, 8.5456, 2024),
])
def test_px4_ulog(name, lat0, lon0, year):
    log = read_telemetry(shared_file(f"flight_logs/{name}"))
    _sane(log, lat0, lon0, 100.0)
    # Boot-relative times moved to UTC by the GPS's own stamps.
    assert datetime.fromtimestamp(log.att[0, 0] * 1e-9, timezone.utc).year == year
    assert abs(log.att[0, 0] - log.gnss[0, 0]) < 60e9
    # Neither log flies: nearly level, nearly still.
    assert np.degrees(np.abs(log.att[:, 1:3])).max() < 5.0
    assert np.abs(log.pos[:, 5:8]).max() < 2.0


@pytest.mark.parametrize("relative, keep", [
    ("flight_logs/dronekit-la-testdata_log171.bin", 300),
    ("flight_logs/pyulog_sample_log_small.ulg", 200),
    ("cuav_cmac_2018-08-05/flight.tlog", 60),
])
def test_truncated_logs_give_one_clear_line(tmp_path, relative, keep):
    src = shared_file(relative)
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes()[:keep])
    with pytest.raises(SkyfixError) as err:
        read_telemetry(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_garbage_and_unknown_logs(tmp_path):
    junk = tmp_path / "x.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, np.uint8).tobytes())
    with pytest.raises(SkyfixError, match="x.bin"):
        read_telemetry(junk)
    with pytest.raises(SkyfixError, match="unknown log type"):
        read_telemetry(_touch(tmp_path / "flight.xyz"))
    bad = tmp_path / "track.csv"
    bad.write_text("time,lat,lon\n1,2,3\n")
    with pytest.raises(SkyfixError, match="needs columns"):
        read_telemetry(bad)


def _touch(path):
    path.write_bytes(b"")
    return path


def test_track_csv_heading_follows_the_course(tmp_path):
    path = tmp_path / "gps.csv"
    t = np.arange(20) * 0.25
    lat = 10.0 + 5.0 * t / 111_320  # 5 m/s due north, then turning east
    lon = 20.0 + np.where(t > 3, (t - 3) * 5.0, 0.0) / (111_320 * np.cos(np.radians(10)))
    rows = ["utc_usec,lat,lon,alt_msl"] + [f"{int(1.7e15 + s * 1e6)},{a:.9f},{o:.9f},{100 + s}"
                                             for s, a, o in zip(t, lat, lon, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    log = read_telemetry(path)
    tel = log.at(int(1.7e18 + 1e9))
    assert not log.attitude_measured and not tel.attitude_measured  # a stand-in, marked
    assert np.degrees(tel.yaw_rad) == pytest.approx(0.0, abs=1.0)
    assert tel.agl_m == pytest.approx(1.0, abs=1e-6)  # above the first sample
    assert tel.vel_ned_mps[0] == pytest.approx(5.0, rel=0.02)
    assert np.degrees(log.at(int(1.7e18 + 4.5e9)).yaw_rad) == pytest.approx(45, abs=10)


def test_gimbal_angles_point_the_camera_like_the_gimbal():
    assert np.allclose(_gimbal_as_body(0.0, -90.0, 30.0), (0.0, 0.0, np.radians(30)))
    roll, pitch, yaw = 4.0, -80.0, -120.0
    r = np.radians([roll, pitch, yaw])
    # Gimbal camera frame: x optical axis, y image right, z image down.
    R_ned_g = R_ned_body(r[0], r[1], r[2])
    cam_axes_in_g = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    want = R_ned_g @ cam_axes_in_g
    got = R_ned_body(*_gimbal_as_body(roll, pitch, yaw)) @ R_BODY_CAM_NADIR
    assert np.allclose(got, want, atol=1e-9)


def _jpeg(path, when: str, sub: str, offset: str | None, gps: dict | None, xmp: str | None):
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd.update({36867: when, 37521: sub, 41989: 24, 37386: 4.5})
    if offset:
        ifd[36881] = offset
    if gps:
        exif.get_ifd(0x8825).update(gps)
    kw = {"xmp": xmp.encode()} if xmp else {}
    Image.new("RGB", (400, 300), (90, 120, 60)).save(path, exif=exif, **kw)


def test_exif_gps_time_and_dji_xmp(tmp_path):
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           '02/22-rdf-syntax-ns#"><rdf:Description xmlns:drone-dji="http://www.dji.com/drone-'
           'dji/1.0/"><drone-dji:RelativeAltitude>+85.30</drone-dji:RelativeAltitude>'
           '<drone-dji:GimbalRollDegree>0.00</drone-dji:GimbalRollDegree>'
           '<drone-dji:GimbalPitchDegree>-90.00</drone-dji:GimbalPitchDegree>'
           '<drone-dji:GimbalYawDegree>-45.50</drone-dji:GimbalYawDegree>'
           '</rdf:Description></rdf:RDF></x:xmpmeta>')
    gps = {1: "S", 2: (35.0, 21.0, 30.0), 3: "W", 4: (149.0, 9.0, 36.0), 6: 650.5}
    _jpeg(tmp_path / "a.jpg", "2024:05:06 12:30:15", "250", "+02:00", gps, xmp)
    meta = read_image_meta(tmp_path / "a.jpg")
    assert meta.time_utc == datetime(2024, 5, 6, 10, 30, 15, 250000, timezone.utc)
    assert meta.lat_deg == pytest.approx(-35.358333, abs=1e-6)
    assert meta.lon_deg == pytest.approx(-149.16, abs=1e-6)
    assert meta.alt_m == 650.5 and meta.focal_35mm == 24 and meta.focal_mm == 4.5
    assert meta.xmp["RelativeAltitude"] == 85.3 and meta.xmp["GimbalYawDegree"] == -45.5
    log = telemetry_from_images([meta, meta], np.array([0, 10**9]))
    tel = log.at(0)
    assert tel.agl_m == 85.3 and np.degrees(tel.yaw_rad) == pytest.approx(-45.5)
    assert abs(tel.roll_rad) < 1e-9 and abs(tel.pitch_rad) < 1e-9  # nadir
    assert tel.attitude_measured  # the gimbal's own angles


def test_zero_exif_gps_means_no_receiver(tmp_path):
    gps = {1: "N", 2: (0.0, 0.0, 0.02), 3: "E", 4: (0.0, 0.0, 0.19), 6: 0.0}
    _jpeg(tmp_path / "b.jpg", "2026:01:13 03:05:00", "", None, gps, None)
    meta = read_image_meta(tmp_path / "b.jpg")
    assert np.isnan(meta.lat_deg) and meta.time_utc.tzinfo == timezone.utc
    assert telemetry_from_images([meta], np.array([0])) is None


def test_dji_xmp_is_read_as_xml_attributes_or_elements_and_bombs_are_refused():
    from skyfix.runtime.io.logs import _dji_xmp

    ns = 'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" ' \
         'xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"'
    attrs = (f'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
             f'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
             f'<rdf:RDF {ns}><rdf:Description drone-dji:RelativeAltitude="+120.50" '
             f'drone-dji:GimbalYawDegree="-12.3" drone-dji:FlightRollDegree="nan"/></rdf:RDF>'
             f'</x:xmpmeta><?xpacket end="w"?>')
    assert _dji_xmp(attrs.encode()) == {"RelativeAltitude": 120.5, "GimbalYawDegree": -12.3}
    elements = (f'<rdf:RDF {ns}><rdf:Description><drone-dji:AbsoluteAltitude> 301.2 '
                f'</drone-dji:AbsoluteAltitude><drone-dji:GimbalPitchDegree>-90</drone-dji:'
                f'GimbalPitchDegree></rdf:Description></rdf:RDF>')
    assert _dji_xmp(elements) == {"AbsoluteAltitude": 301.2, "GimbalPitchDegree": -90.0}
    # text that merely looks like a value outside any XML is not read
    assert _dji_xmp(b'garbage drone-dji:RelativeAltitude="+99"') == {}
    bomb = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            f'<rdf:RDF {ns}><rdf:Description drone-dji:RelativeAltitude="&b;"/></rdf:RDF>')
    assert _dji_xmp(bomb) == {}
    assert _dji_xmp(b"") == {}
