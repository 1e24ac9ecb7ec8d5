"""A local XYZ tile server cut from an orthophoto, with faults on demand (tests, benchmarks).

    ortho --warp once to Web Mercator at zoom `max_zoom`, tile-aligned--> array in memory
    GET /{z}/{x}/{y}.jpg (z <= max_zoom) --> JPEG (or PNG) tile; 404 where the image does
    not cover the whole tile
    GET /terrarium/{z}/{x}/{y}.png --> Terrarium-encoded heights of a DEM, when given

`wrap=True` repeats the image without end, so any area has imagery (throughput tests).
Faults per tile path ("z/x/y"): `TileFault("404"|"429"|"truncate"|"slow"|"html", times,
retry_after_s, delay_s)`, served `times` times, then the real tile. Every request is
counted per path (`hits`; GET /stats: totals as JSON). Listens on 127.0.0.1 only;
`python -m skyfix.sim.tile_server` runs it in the foreground and prints its URL template.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

HALF_M = 20037508.342789244
TILE_PX = 256
_PATH = re.compile(r"^/(terrarium/)?(\d+)/(\d+)/(\d+)\.(jpg|png)$")


_WMTS_CAPS = """<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
 xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">
<ows:ServiceIdentification><ows:Title>skyfix test WMTS</ows:Title>
<ows:ServiceType>OGC WMTS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
<ows:AccessConstraints>CC BY 4.0</ows:AccessConstraints></ows:ServiceIdentification>
<ows:OperationsMetadata><ows:Operation name="GetTile"><ows:DCP><ows:HTTP>
<ows:Get xlink:href="{base}/wmts?"/></ows:HTTP></ows:DCP></ows:Operation></ows:OperationsMetadata>
<Contents><Layer><ows:Title>ortho</ows:Title><ows:Identifier>ortho</ows:Identifier>
<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
<Format>image/jpeg</Format><TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet>
</TileMatrixSetLink><ResourceURL format="image/jpeg" resourceType="tile"
 template="{base}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{fmt}"/></Layer>
<TileMatrixSet><ows:Identifier>GoogleMapsCompatible</ows:Identifier>
<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>{matrices}</TileMatrixSet>
</Contents></Capabilities>"""
_WMTS_MATRIX = """<TileMatrix><ows:Identifier>{z}</ows:Identifier>
<ScaleDenominator>{scale!r}</ScaleDenominator><TopLeftCorner>-{half!r} {half!r}</TopLeftCorner>
<TileWidth>256</TileWidth><TileHeight>256</TileHeight><MatrixWidth>{n}</MatrixWidth>
<MatrixHeight>{n}</MatrixHeight></TileMatrix>"""
_WMS_CAPS = """<?xml version="1.0" encoding="UTF-8"?>
<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms"
 xmlns:xlink="http://www.w3.org/1999/xlink">
<Service><Name>WMS</Name><Title>skyfix test WMS</Title><AccessConstraints>CC BY 4.0
</AccessConstraints></Service>
<Capability><Request>
<GetCapabilities><Format>text/xml</Format><DCPType><HTTP><Get><OnlineResource
 xlink:href="{base}/wms?"/></Get></HTTP></DCPType></GetCapabilities>
<GetMap><Format>image/jpeg</Format><DCPType><HTTP><Get><OnlineResource
 xlink:href="{base}/wms?"/></Get></HTTP></DCPType></GetMap></Request>
<Exception><Format>XML</Format></Exception>
<Layer><Title>root</Title><CRS>EPSG:3857</CRS>
<Layer queryable="0"><Name>ortho</Name><Title>ortho</Title><CRS>EPSG:3857</CRS>
<EX_GeographicBoundingBox><westBoundLongitude>-180</westBoundLongitude>
<eastBoundLongitude>180</eastBoundLongitude><southBoundLatitude>-85</southBoundLatitude>
<northBoundLatitude>85</northBoundLatitude></EX_GeographicBoundingBox></Layer></Layer>
</Capability></WMS_Capabilities>"""


@dataclass(frozen=True)
class TileFault:
    """Serve `kind` instead of the tile, `times` times."""

    kind: str  # "404", "429", "truncate", "slow", "html"
    times: int = 1
    retry_after_s: float = 1.0  # for 429
    delay_s: float = 5.0  # for slow


def _warp(path: Path, zoom: int, band_count: int, dtype: str
          ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """([C, H, W] image, [H, W] valid, first tile column, first tile row) of `path` in Web
    Mercator at `zoom`, covering whole tiles."""
    res = 2 * HALF_M / (TILE_PX * 2**zoom)
    size = res * TILE_PX
    with rasterio.open(path) as src:
        w, s, e, n = transform_bounds(src.crs, "EPSG:3857", *src.bounds, densify_pts=21)
        c0, r0 = math.floor((w + HALF_M) / size), math.floor((HALF_M - n) / size)
        c1, r1 = math.floor((e + HALF_M) / size), math.floor((HALF_M - s) / size)
        width, height = (c1 - c0 + 1) * TILE_PX, (r1 - r0 + 1) * TILE_PX
        transform = Affine(res, 0, -HALF_M + c0 * size, 0, -res, HALF_M - r0 * size)
        img = np.zeros((band_count, height, width), dtype)
        valid = np.zeros((height, width), np.uint8)
        kw = dict(src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=CRS.from_epsg(3857), resampling=Resampling.bilinear)
        reproject(src.read(list(range(1, band_count + 1))), img, **kw)
        reproject(src.dataset_mask(), valid, **{**kw, "resampling": Resampling.nearest})
    return img, valid > 0, c0, r0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients that vanish mid-request (killed fetches, timeouts) are not errors here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class TileServer:
    """Context manager: serves tiles of `ortho` (and a Terrarium `dem`) on 127.0.0.1."""

    def __init__(self, ortho: Path, max_zoom: int = 19, wrap: bool = False,
                 fmt: str = "jpg", quality: int = 90, dem: Path | None = None,
                 faults: dict[str, TileFault] | None = None, port: int = 0) -> None:
        self.max_zoom, self.wrap, self.fmt, self.quality = max_zoom, wrap, fmt, quality
        img, self._valid, self._c0, self._r0 = _warp(Path(ortho), max_zoom, 3, "uint8")
        if wrap:  # repeat only the part that is imagery throughout
            rows = np.flatnonzero(self._valid.mean(1) > 0.5)
            cols = np.flatnonzero(self._valid.mean(0) > 0.5)
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            while not self._valid[r0:r1, c0:c1].all():
                r0, r1, c0, c1 = r0 + 1, r1 - 1, c0 + 1, c1 - 1
            img, self._valid = img[:, r0:r1, c0:c1], self._valid[r0:r1, c0:c1]
        self._img = np.ascontiguousarray(np.moveaxis(img, 0, -1)[:, :, ::-1])  # BGR
        self._dem = None if dem is None else _warp(Path(dem), max_zoom, 1, "float32")
        self._faults = dict(faults or {})
        self._left = {k: f.times for k, f in self._faults.items()}
        self.hits: Counter[str] = Counter()
        self.hit_times: dict[str, list[float]] = {}  # monotonic time of each request
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{{z}}/{{x}}/{{y}}.{self.fmt}"

    @property
    def terrarium_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/terrarium/{{z}}/{{x}}/{{y}}.png"

    def __enter__(self) -> TileServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def _window(self, arr: np.ndarray, z: int, x: int, y: int, c0: int, r0: int
                ) -> np.ndarray | None:
        """The [256 * f, 256 * f, ...] block of `arr` under tile z/x/y, f = 2^(max - z)."""
        f = 2 ** (self.max_zoom - z)
        cols = (x * f - c0) * TILE_PX + np.arange(TILE_PX * f)
        rows = (y * f - r0) * TILE_PX + np.arange(TILE_PX * f)
        h, w = arr.shape[:2]
        if self.wrap:
            cols, rows = cols % w, rows % h
        elif cols[0] < 0 or rows[0] < 0 or cols[-1] >= w or rows[-1] >= h:
            return None
        return arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if not self.wrap \
            else arr[np.ix_(rows, cols)]

    def tile(self, z: int, x: int, y: int, terrain: bool = False) -> bytes | None:
        """The encoded tile, or None where there is no imagery."""
        if z > self.max_zoom or (terrain and self._dem is None):
            return None
        if terrain:
            dem, valid, c0, r0 = self._dem
            block, ok = self._window(dem[0], z, x, y, c0, r0), self._window(valid, z, x, y,
                                                                             c0, r0)
        else:
            block = self._window(self._img, z, x, y, self._c0, self._r0)
            ok = self._window(self._valid, z, x, y, self._c0, self._r0)
        if block is None or not ok.all():
            return None
        if block.shape[0] != TILE_PX:
            block = cv2.resize(block, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
        if terrain:
            v = np.clip(block.astype(np.float64) + 32768, 0, 65535.99)
            rgb = np.stack([np.floor(v / 256), np.floor(v % 256), np.floor((v % 1) * 256)],
                           -1).astype(np.uint8)
            return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
        if self.fmt == "png":
            return cv2.imencode(".png", block)[1].tobytes()
        return cv2.imencode(".jpg", block, [cv2.IMWRITE_JPEG_QUALITY, self.quality])[1].tobytes()

    def ogc(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a WMTS or WMS request (capabilities, GetMap)."""
        service = "wmts" if path.startswith("/wmts") else "wms"
        q = {k.upper(): v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        base = f"http://127.0.0.1:{self._server.server_address[1]}"
        if q.get("REQUEST", "GetCapabilities").lower() == "getcapabilities":
            if service == "wmts":
                matrices = "".join(_WMTS_MATRIX.format(z=z, scale=559082264.0287178 / 2**z,
                                                       n=2**z, half=HALF_M)
                                   for z in range(self.max_zoom + 1))
                xml = _WMTS_CAPS.format(base=base, matrices=matrices, fmt=self.fmt)
            else:
                xml = _WMS_CAPS.format(base=base)
            return 200, xml.encode(), "application/xml"
        if service == "wms" and q.get("REQUEST", "").lower() == "getmap":
            try:
                x0, y0, x1, y1 = (float(v) for v in q["BBOX"].split(","))
                w, h = int(q["WIDTH"]), int(q["HEIGHT"])
            except (KeyError, ValueError):
                return 400, b"bad GetMap", "text/plain"
            if q.get("CRS", "").upper() != "EPSG:3857":
                return 400, b"CRS not offered", "text/plain"
            res = 2 * HALF_M / (TILE_PX * 2**self.max_zoom)
            ox, oy = -HALF_M + self._c0 * TILE_PX * res, HALF_M - self._r0 * TILE_PX * res
            # map output pixel centres to array pixel centres (an affine warp)
            a = np.array([[(x1 - x0) / w / res, 0, (x0 - ox) / res - 0.5 + (x1 - x0) / w / res
                           / 2], [0, (y1 - y0) / h / res, (oy - y1) / res - 0.5
                                  + (y1 - y0) / h / res / 2]], np.float64)
            img = cv2.warpAffine(self._img, a, (w, h), flags=cv2.INTER_LINEAR
                                 | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
            return 200, cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY,
                                                   self.quality])[1].tobytes(), "image/jpeg"
        return 400, b"unsupported request", "text/plain"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None,
                      length: int | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout under test)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/stats":
                    with server._lock:
                        body = json.dumps({"requests": sum(server.hits.values()),
                                           "tiles": len(server.hits)}).encode()
                    self._send(200, body, "application/json")
                    return
                if self.path.startswith(("/wmts", "/wms")):
                    code, body, ctype = server.ogc(self.path)
                    self._send(code, body, ctype)
                    return
                m = _PATH.match(self.path)
                if not m:
                    self._send(404, b"not found", "text/plain")
                    return
                key = f"{m[2]}/{m[3]}/{m[4]}"
                with server._lock:
                    server.hits[key] += 1
                    server.hit_times.setdefault(key, []).append(time.monotonic())
                    fault = server._faults.get(key) if server._left.get(key, 0) > 0 else None
                    if fault is not None:
                        server._left[key] -= 1
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.delay_s)
                elif fault is not None:
                    self._fault(fault, int(m[2]), int(m[3]), int(m[4]))
                    return
                body = server.tile(int(m[2]), int(m[3]), int(m[4]), terrain=bool(m[1]))
                if body is None:
                    self._send(404, b"no tile", "text/plain")
                else:
                    self._send(200, body, f"image/{'png' if m[5] == 'png' else 'jpeg'}")

            def _fault(self, fault: TileFault, z: int, x: int, y: int) -> None:
                if fault.kind == "404":
                    self._send(404, b"no tile", "text/plain")
                elif fault.kind == "429":
                    self._send(429, b"slow down", "text/plain",
                               {"Retry-After": f"{fault.retry_after_s:g}"})
                elif fault.kind == "html":
                    self._send(200, b"<html>maintenance</html>", "image/jpeg")
                elif fault.kind == "truncate":
                    body = server.tile(z, x, y) or b""
                    self._send(200, body[:len(body) // 2], "image/jpeg")

        return Handler


def main() -> None:
    p = argparse.ArgumentParser(description="Serve an orthophoto as XYZ tiles on 127.0.0.1")
    p.add_argument("ortho", type=Path)
    p.add_argument("--max-zoom", type=int, default=19)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--wrap", action="store_true", help="repeat the image without end")
    a = p.parse_args()
    server = TileServer(a.ortho, a.max_zoom, a.wrap, port=a.port)
    print(server.url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
