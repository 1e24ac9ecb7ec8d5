"""`skyfix maps fetch`: the command line of skyfix.maps.fetch (arguments -> library calls).

One of --bbox / --point + --radius / --track + --buffer says where; one of --url /
--provider / --wmts / --wms says from what; --gsd, or --agl MIN,MAX with the camera, says
how fine. --dem-url / --dem-file add a terrain model; --build PACK builds the map pack too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skyfix.runtime.apps.args import add_pack_options, pack_options
from skyfix.runtime.core.errors import SkyfixError

DEFAULT_CACHE = Path.home() / ".cache" / "skyfix" / "tiles"


def _numbers(n: int):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None
        if len(values) not in ((n,) if n else (1, 2)):
            raise argparse.ArgumentTypeError(f"expected {n or '1 or 2'} comma-separated"
                                             f" numbers, got {text!r}")
        return values
    return parse


def add_parser(msub) -> None:
    """Add `fetch` to the `maps` subcommands."""
    f = msub.add_parser("fetch", help="download imagery (and terrain) for an area into a "
                                      "GeoTIFF in a local metric CRS, ready for maps build")
    where = f.add_mutually_exclusive_group(required=True)
    where.add_argument("--bbox", type=_numbers(4), metavar="W,S,E,N", help="degrees")
    where.add_argument("--point", type=_numbers(2), metavar="LAT,LON",
                       help="centre, degrees (with --radius)")
    where.add_argument("--track", type=Path, metavar="FILE",
                       help="QGC .plan, KML or GPX (with --buffer)")
    f.add_argument("--radius", type=float, default=500.0, help="metres around --point (500)")
    f.add_argument("--buffer", type=float, default=200.0, help="metres around --track (200)")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", metavar="TEMPLATE",
                     help="XYZ tile URL with {z} {x} {y} ({-y} for TMS, {s} subdomain)")
    src.add_argument("--provider", metavar="NAME", help="xyzservices name, e.g. "
                                                        "Esri.WorldImagery")
    src.add_argument("--wmts", metavar="URL", help="WMTS GetCapabilities URL")
    src.add_argument("--wms", metavar="URL", help="WMS GetCapabilities URL")
    f.add_argument("--layer", help="WMTS/WMS layer (default: the first)")
    f.add_argument("--matrix-set", help="WMTS tile matrix set (default: Web Mercator)")
    f.add_argument("--api-key", help="for providers that need one (never recorded)")
    f.add_argument("--attribution", help="credit line the provider asks for (required "
                                         "with --url)")
    f.add_argument("--terms", default="", help="the provider's terms of use (URL or text)")
    f.add_argument("--max-zoom", type=int, default=22, help="highest zoom of --url (22)")
    f.add_argument("--gsd", type=float, help="ground resolution wanted, m/px")
    f.add_argument("--agl", type=_numbers(0), metavar="MIN[,MAX]",
                   help="heights above ground to fly, m: the map is as fine as the camera at "
                        "MIN; --build adds levels up to MAX (default 120)")
    f.add_argument("--camera", type=Path, help="camera.yaml (default 640 px, 70 deg wide)")
    f.add_argument("--crs", default="utm", help="output CRS: utm, local-tm or EPSG:n (utm)")
    f.add_argument("--dem-url", metavar="TEMPLATE", help="terrain tiles {z}/{x}/{y}")
    f.add_argument("--dem-encoding", choices=("terrarium", "terrain-rgb"),
                   default="terrarium")
    f.add_argument("--dem-max-zoom", type=int, default=15,
                   help="highest zoom of --dem-url (15, as Terrarium)")
    f.add_argument("--dem-file", type=Path, help="local DEM to cut to the area instead")
    f.add_argument("--dem-gsd", type=float, default=5.0, help="DEM resolution, m (5)")
    f.add_argument("--workers", type=int, default=4, help="parallel requests (4)")
    f.add_argument("--rate", type=float, default=8.0, help="requests per second at most (8)")
    f.add_argument("--timeout", type=float, default=15.0, help="seconds per request (15)")
    f.add_argument("--retries", type=int, default=4, help="per tile (4)")
    f.add_argument("--max-missing", type=float, default=0.02,
                   help="share of tiles the source may lack (404) (0.02)")
    f.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"({DEFAULT_CACHE})")
    f.add_argument("--out", required=True, type=Path, help="output GeoTIFF (.tif)")
    f.add_argument("--build", type=Path, metavar="PACK", help="also build this map pack")
    f.add_argument("--force", action="store_true", help="with --build: replace the pack")
    add_pack_options(f)  # with --build
    f.set_defaults(func=cmd_maps_fetch)


def cmd_maps_fetch(a: argparse.Namespace) -> None:
    from skyfix.maps import area as areas
    from skyfix.maps import tilesource as ts
    from skyfix.maps.download import DownloadOptions
    from skyfix.maps.fetch import dem_from_file, fetch_dem, fetch_imagery
    from skyfix.runtime.core.camera import CameraModel

    if a.bbox:
        area = areas.area_from_bbox(a.bbox, a.crs)
    elif a.point:
        area = areas.area_from_point(a.point[0], a.point[1], a.radius, a.crs)
    else:
        area = areas.area_from_track(a.track, a.buffer, a.crs)
    camera = CameraModel.load(a.camera) if a.camera else CameraModel.from_fov(640, 480, 70.0)
    agl = a.agl or (120.0,)
    if min(agl) <= 0:
        raise SkyfixError(f"heights above ground must be positive, got {agl}")
    gsd = a.gsd or round(areas.camera_gsd_m(min(agl), camera), 3)
    if a.url:
        if not a.attribution:
            raise SkyfixError("--url needs --attribution: the credit the tile provider asks"
                              " for (it goes into the map and its pack)")
        source = ts.xyz_source(a.url, a.attribution, a.terms, a.max_zoom)
    elif a.provider:
        source = ts.provider_source(a.provider, a.api_key, a.terms)
    elif a.wmts:
        source = ts.wmts_source(a.wmts, a.layer, a.matrix_set, a.attribution or "", a.terms)
    else:
        source = ts.wms_source(a.wms, area, gsd, a.layer, a.attribution or "", a.terms)
    opts = DownloadOptions(workers=a.workers, rate_per_s=a.rate, timeout_s=a.timeout,
                           retries=a.retries)
    print(f"area {area.area_km2:.2f} km2 in {area.crs.to_string()}, {gsd:g} m/px from "
          f"{source.kind} ({source.attribution})")
    r = fetch_imagery(area, source, a.out, gsd, a.cache, opts, a.max_missing)
    t = r.tiles
    print(f"{t.total} tiles at level {r.level} ({r.source_res_m:.2f} m/px on the ground):"
          f" {t.cached} cached, {t.downloaded} downloaded, {t.missing} missing at the source,"
          f" {t.retries} retries; wrote {r.path} and {r.record}")
    dem = None
    if a.dem_url or a.dem_file:
        dem = a.out.with_name(a.out.stem + "_dem.tif")
        if a.dem_file:
            dem_from_file(area, a.dem_file, dem, a.dem_gsd)
        else:
            src = ts.xyz_source(a.dem_url, a.attribution or a.dem_url, a.terms, a.dem_max_zoom)
            d = fetch_dem(area, src, a.dem_encoding, dem, a.dem_gsd, a.cache, opts,
                          a.max_missing)
            print(f"DEM: {d.tiles.total} tiles at level {d.level}")
        print(f"wrote {dem}")
    if a.build:
        from skyfix.maps.build import build_pack

        gsds = areas.pack_gsds_m(r.gsd_m, max(agl), camera)
        path = build_pack([a.out], a.build, gsds_m=gsds, dem=dem, force=a.force,
                          **pack_options(a))
        print(f"map pack written to {path} (levels {', '.join(f'{g:g}' for g in gsds)} m/px)")
