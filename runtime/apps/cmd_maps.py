"""`skyfix maps ...`: map packs (build, fetch, shard, verify, sign, info)."""

from __future__ import annotations

import argparse
from pathlib import Path

from skyfix.runtime.apps import args
from skyfix.runtime.core.errors import SkyfixError


def cmd_maps_build(a: argparse.Namespace) -> None:
    from skyfix.maps.build import build_pack

    kwargs = dict(gsds_m=a.gsd, tile_px=a.tile, overlap=a.overlap, force=a.force, dem=a.dem,
                  **args.pack_options(a))
    if a.ray is not None:
        from skyfix.maps.distributed import build_pack_ray

        path = build_pack_ray(a.orthos, a.out, None if a.ray == "local" else a.ray,
                              a.workers, **kwargs)
    else:
        path = build_pack(a.orthos, a.out, **kwargs)
    print(f"map pack written to {path}")


def cmd_maps_shard(a: argparse.Namespace) -> None:
    from skyfix.maps.shard_write import shard_pack

    print(f"sharded map pack written to {shard_pack(a.pack, a.out, a.cell_m)}")


def _pack_problems(path: Path) -> tuple[Path, list[str]]:
    """(the manifest file, every problem as a line naming the pack) of a plain or sharded
    map pack."""
    from skyfix.maps.manifest import MANIFEST
    from skyfix.maps.pack import verify_pack
    from skyfix.maps.shards import SHARDS_MANIFEST, verify_sharded

    if (path / SHARDS_MANIFEST).is_file():
        return path / SHARDS_MANIFEST, verify_sharded(path)
    return path / MANIFEST, [f"map pack {path}: {p}" for p in verify_pack(path)]


def cmd_maps_verify(a: argparse.Namespace) -> None:
    from skyfix.runtime.core.provenance import check_manifest_signature

    manifest, problems = _pack_problems(a.pack)
    if a.trusted_key:
        check_manifest_signature(manifest, a.trusted_key, f"map pack {a.pack}")
    if problems:
        raise SkyfixError(problems[0] + (f" (+{len(problems) - 1} more)"
                                         if len(problems) > 1 else ""))
    print(f"map pack {a.pack}: OK")


def cmd_sign(a: argparse.Namespace) -> None:
    from skyfix.models.manifest import load_manifest, manifest_path
    from skyfix.runtime.core.provenance import sign_manifest

    if a.command == "maps":
        manifest, problems = _pack_problems(a.target)  # never sign a pack that fails
        if problems:
            raise SkyfixError(f"{problems[0]}; not signed")
    else:
        load_manifest(a.target, verify=True)
        manifest = manifest_path(a.target)
    print(f"signed {manifest}: {sign_manifest(manifest, a.key)}")


def cmd_maps_info(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import pack_info
    from skyfix.maps.shards import open_map_pack

    info = pack_info(open_map_pack(a.pack, verify=False))
    for key, value in vars(info).items():
        print(f"{key:>18}: {value}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the root parser's subparsers."""
    maps = sub.add_parser("maps", help="build, verify and inspect map packs")
    msub = maps.add_subparsers(dest="maps_command", required=True)
    b = msub.add_parser("build", help="tile an orthophoto and precompute its features")
    b.add_argument("orthos", nargs="+", type=Path, help="GeoTIFF/COG/VRT orthophotos")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--gsd", type=args.floats, help="ground resolutions in m/px, e.g. 0.3,0.6")
    b.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    b.add_argument("--overlap", type=float, default=0.5, help="tile overlap 0..0.9 (default 0.5)")
    b.add_argument("--force", action="store_true", help="replace an existing output folder")
    args.add_pack_options(b)
    b.add_argument("--dem", type=Path, help="terrain model (GeoTIFF) to resample into the pack")
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="compute tile features on Ray (a local cluster, or ADDRESS)")
    b.add_argument("--workers", type=int, help="CPUs of a local Ray cluster (default: all)")
    b.set_defaults(func=cmd_maps_build)
    from skyfix.runtime.apps.maps_fetch import add_parser as add_fetch_parser

    add_fetch_parser(msub)
    from skyfix.runtime.apps.maps_survey import add_parser as add_survey_parser

    add_survey_parser(msub)
    sh = msub.add_parser("shard", help="cut a map pack into geographic cells for lazy loading")
    sh.add_argument("pack", type=Path, help="map pack folder")
    sh.add_argument("--cell-m", type=float, required=True, help="cell size, metres")
    sh.add_argument("--out", required=True, type=Path)
    sh.set_defaults(func=cmd_maps_shard)
    v = msub.add_parser("verify", help="re-hash every file of a pack (plain or sharded) "
                        "against its manifest")
    v.add_argument("pack", type=Path)
    v.add_argument("--trusted-key", type=Path, metavar="PEM",
                   help="also require an Ed25519 signature by this public key")
    v.set_defaults(func=cmd_maps_verify)
    sg = msub.add_parser("sign", help="sign a pack's manifest (plain or sharded) with an "
                         "Ed25519 private key")
    sg.add_argument("target", type=Path, metavar="PACK")
    sg.add_argument("--key", required=True, type=Path, metavar="PEM", help="private key")
    sg.set_defaults(func=cmd_sign)
    i = msub.add_parser("info", help="summary of a pack")
    i.add_argument("pack", type=Path)
    i.set_defaults(func=cmd_maps_info)
