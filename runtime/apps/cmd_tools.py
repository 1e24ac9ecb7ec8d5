"""`skyfix config doc`, `skyfix bench crossdate|retrieval` and `skyfix calibrate ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from skyfix.runtime.apps import args


def cmd_config_doc(a: argparse.Namespace) -> None:
    from skyfix.runtime.core.config_doc import default_yaml, markdown_table

    print(markdown_table() if a.markdown else default_yaml(), end="")


def cmd_bench_crossdate(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.bench_crossdate import bench_crossdate

    report = bench_crossdate(a.pairs, a.out, a.views, a.seed, a.method,
                             trained_model=a.trained_model)
    for name, m in report["methods"].items():
        print(f"{name}: {m['overall']}")
    print(f"wrote {a.out}")


def cmd_bench_retrieval(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.bench_retrieval import bench_retrieval

    report = bench_retrieval(a.pairs, a.out, a.views, a.seed, a.method,
                             trained_model=a.trained_model)
    for name, m in report["methods"].items():
        print(f"{name}: {m['overall']}")
    print(f"wrote {a.out}")


def cmd_calibrate_camera(a: argparse.Namespace) -> None:
    from skyfix.calibration.intrinsics import (
        calibrate_intrinsics,
        parse_pattern,
        write_camera_info,
    )

    args.output_file(a.out)
    if a.ros:
        args.output_file(a.ros)
    res = calibrate_intrinsics(a.images, parse_pattern(a.pattern), a.min_views)
    res.camera.save(a.out)
    c = res.camera
    print(f"board found in {len(res.views_used)} of {res.views_total} images")
    print(f"fx {c.fx:.2f}  fy {c.fy:.2f}  cx {c.cx:.2f}  cy {c.cy:.2f}  "
          f"dist {' '.join(f'{d:.5f}' for d in c.dist)}")
    print(f"RMS reprojection error {res.rms_px:.3f} px (worst image "
          f"{float(res.view_rms_px.max()):.3f} px)")
    print(f"wrote {a.out}")
    if a.ros:
        write_camera_info(a.ros, c, a.camera_name)
        print(f"wrote {a.ros}")


def cmd_calibrate_mount(a: argparse.Namespace) -> None:
    from skyfix.calibration.mount import calibrate_mount
    from skyfix.runtime.core.config import load_config

    args.output_file(a.out)
    cal = calibrate_mount(a.flight, a.map, load_config(a.config), a.min_frames)
    r, p_, y = cal.mount_error_deg
    print(f"frames used {cal.frames_used} of {cal.frames_total}")
    print(f"mount vs nadir: roll {r:+.3f}  pitch {p_:+.3f}  yaw {y:+.3f} deg "
          f"(per-frame spread {cal.rotation_rms_deg:.2f} deg RMS)")
    print(f"time offset {cal.time_offset_s * 1e3:+.1f} ms (1-sigma "
          f"{cal.time_offset_sigma_s * 1e3:.1f} ms): frames are stamped this late")
    print(f"map vs GNSS bias E {cal.bias_en_m[0]:+.2f} N {cal.bias_en_m[1]:+.2f} m, "
          f"track residual {cal.position_rms_m:.2f} m RMS")
    cal.save(a.out)
    print(f"wrote {a.out}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the root parser's subparsers."""
    co = sub.add_parser("config", help="the configuration schema")
    cosub = co.add_subparsers(dest="config_command", required=True)
    cd = cosub.add_parser("doc", help="every key with its default, allowed values and meaning "
                          "(configs/default.yaml; --markdown: the README table)")
    cd.add_argument("--markdown", action="store_true", help="the README table instead")
    cd.set_defaults(func=cmd_config_doc)
    bench = sub.add_parser("bench", help="benchmarks of the product itself")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    for name, func, text in (
            ("crossdate", cmd_bench_crossdate, "views of one date localised against a map pack"
             " of another, on two-date pair sets (JSON + failure sheets)"),
            ("retrieval", cmd_bench_retrieval, "the global search (no prior): views of one date"
             " ranked against every tile of a map of another, Game4Loc's metrics")):
        bc = bsub.add_parser(name, help=text)
        bc.add_argument("--pairs", type=Path, nargs="+", required=True, metavar="DIR")
        bc.add_argument("--views", type=int, default=10, help="views per pair")
        bc.add_argument("--seed", type=int, default=0)
        bc.add_argument("--method", action="append", help="encoder (repeatable; default: the"
                        " map build default)")
        bc.add_argument("--trained-model", type=Path, metavar="ONNX",
                        help="weights of your own for method xfeat-xd (skyfix models train; "
                             "default: the shipped ones)")
        bc.add_argument("--out", type=Path, default=Path(f"out/bench/{name}.json"))
        bc.set_defaults(func=func)
    cal = sub.add_parser("calibrate", help="camera intrinsics, camera mount and time offset")
    csub = cal.add_subparsers(dest="calibrate_command", required=True)
    cc = csub.add_parser("camera", help="intrinsics + distortion from calibration-board images")
    cc.add_argument("images", nargs="+", type=Path, help="images of the board")
    cc.add_argument("--pattern", required=True,
                    help="chessboard:COLSxROWS:SQUARE_M (inner corners) or "
                         "charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT]")
    cc.add_argument("--out", type=Path, default=Path("camera.yaml"),
                    help="OpenCV FileStorage YAML (default camera.yaml)")
    cc.add_argument("--ros", type=Path, help="also write a ROS camera_info YAML here")
    cc.add_argument("--camera-name", default="camera", help="camera_name in the ROS file")
    cc.add_argument("--min-views", type=int, default=8,
                    help="refuse with fewer usable images (default 8)")
    cc.set_defaults(func=cmd_calibrate_camera)
    cm = csub.add_parser("mount", help="camera-to-body rotation and camera time offset from "
                                       "a recorded flight with good GNSS")
    cm.add_argument("flight", type=Path, help="recorded-flight folder")
    cm.add_argument("--map", required=True, type=Path, help="map pack under the flight")
    cm.add_argument("--out", type=Path, default=Path("mount.yaml"),
                    help="OpenCV FileStorage YAML (default mount.yaml)")
    cm.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    cm.add_argument("--min-frames", type=int, default=10,
                    help="refuse with fewer frames matched (default 10)")
    cm.set_defaults(func=cmd_calibrate_mount)
