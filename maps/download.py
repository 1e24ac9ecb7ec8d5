"""Polite parallel tile downloads into an on-disk cache that survives interruption.

    jobs (cache key, URL) --skip those in the cache--> worker threads --rate limiter-->
    HTTP GET --check: status, complete body, decodes as an image--> cache (atomic)

- Rate: at most `rate_per_s` requests start per second, across all workers (a shared
  schedule of start times); `workers` requests at most are in flight.
- 429 / 503 with Retry-After (seconds or an HTTP date): every worker waits until then
  (without Retry-After: exponential back-off); so do timeouts, connection errors, other 5xx
  and bodies that are cut short or do not decode, up to `retries` times per tile.
- 404 / 204: the tile does not exist; a `.none` marker goes into the cache so a resumed
  fetch does not ask again, and the mosaic leaves its area as no-data.
- A tile enters the cache only complete and decoded, written to a temporary name in the same
  folder and renamed (os.replace): after kill -9 the cache holds whole tiles and stray
  `.tmp` files, which are ignored and removed on the next run.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from PIL import Image
from tqdm import tqdm

from skyfix.runtime.core.errors import SkyfixError

USER_AGENT = "skyfix-maps-fetch/0.1 (offline map preparation for UAV navigation)"
MISSING_SUFFIX = ".none"
MAX_RETRY_AFTER_S = 300.0  # a server asking for a longer pause ends the fetch


@dataclass(frozen=True)
class DownloadOptions:
    """Politeness and patience of a download."""

    workers: int = 4
    rate_per_s: float = 8.0
    timeout_s: float = 15.0
    retries: int = 4
    backoff_s: float = 1.0  # first back-off without Retry-After; doubles each retry
    user_agent: str = USER_AGENT


@dataclass(frozen=True)
class DownloadStats:
    """What one download run did: tiles found in the cache, fetched, absent at the source."""

    total: int
    cached: int
    downloaded: int
    missing: int
    retries: int
    bytes: int
    seconds: float


class TileCache:
    """Tiles as files `root/KEY` (KEY like "19/285123/181234"); `.none` marks a 404."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def state(self, key: str) -> str:
        """"tile", "missing" or "absent"."""
        p = self.path(key)
        if p.is_file():
            return "tile"
        return "missing" if p.with_name(p.name + MISSING_SUFFIX).is_file() else "absent"

    def put(self, key: str, data: bytes | None) -> None:
        """Store a tile's bytes, or (None) that the source has no such tile; atomically."""
        p = self.path(key)
        if data is None:
            p = p.with_name(p.name + MISSING_SUFFIX)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data or b"")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def sweep(self) -> int:
        """Remove temporary files left by an interrupted run; return how many."""
        n = 0
        if self.root.is_dir():
            for p in self.root.rglob("*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n


class _Pacer:
    """Start times spaced 1/rate apart across threads, and a shared pause (Retry-After)."""

    def __init__(self, rate_per_s: float) -> None:
        self._gap = 1.0 / rate_per_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._gap
        time.sleep(max(0.0, start - now))

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


class _Retry(Exception):
    def __init__(self, why: str, after_s: float | None = None) -> None:
        super().__init__(why)
        self.after_s = after_s


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def check_image(data: bytes) -> None:
    """Raise ValueError unless `data` is a complete image (decoded in full by Pillow)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


def _get(session: requests.Session, url: str, opts: DownloadOptions) -> bytes | None:
    """The tile's bytes, None when the source has no such tile; raises _Retry or SkyfixError."""
    try:
        r = session.get(url, timeout=opts.timeout_s)
        body = r.content
    except requests.Timeout:
        raise _Retry(f"no answer within {opts.timeout_s:g} s") from None
    except requests.RequestException as e:
        raise _Retry(f"connection failed ({type(e).__name__})") from None
    if r.status_code in (404, 204, 410):
        return None
    if r.status_code in (429, 503):
        raise _Retry(f"HTTP {r.status_code}", _retry_after_s(r.headers.get("Retry-After")))
    if r.status_code >= 500:
        raise _Retry(f"HTTP {r.status_code}")
    if r.status_code != 200:
        raise SkyfixError(f"{url}: HTTP {r.status_code} {r.reason}")
    try:
        check_image(body)
    except ValueError as e:
        raise _Retry(f"broken image ({e})") from None
    return body


def download_tiles(jobs: Sequence[tuple[str, str]], cache: TileCache, opts: DownloadOptions,
                   progress: bool = True, desc: str = "tiles") -> DownloadStats:
    """Bring every (key, url) of `jobs` into `cache`. Raises SkyfixError (one line, naming
    the tile and why) when a tile cannot be had after the retries; tiles already fetched
    stay cached, so a rerun resumes."""
    if opts.workers < 1 or not opts.rate_per_s > 0 or opts.retries < 0:
        raise SkyfixError("downloads need workers >= 1, a positive rate and retries >= 0")
    cache.sweep()
    todo = [(k, u) for k, u in jobs if cache.state(k) == "absent"]
    pacer = _Pacer(opts.rate_per_s)
    stop = threading.Event()
    counts = {"missing": 0, "retries": 0, "bytes": 0}
    lock = threading.Lock()
    local = threading.local()
    t0 = time.monotonic()

    def one(key: str, url: str) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["User-Agent"] = opts.user_agent
        delay = opts.backoff_s
        for attempt in range(opts.retries + 1):
            if stop.is_set():
                return
            pacer.wait()
            try:
                data = _get(local.session, url, opts)
            except _Retry as e:
                if attempt == opts.retries:
                    raise SkyfixError(f"tile {key} ({url}): {e} after {attempt + 1} tries;"
                                      " the tiles fetched so far are cached, rerun to"
                                      " resume") from None
                wait = e.after_s if e.after_s is not None else delay
                if wait > MAX_RETRY_AFTER_S:
                    raise SkyfixError(f"tile {key}: the server asks to wait {wait:.0f} s"
                                      " (Retry-After); try again later") from None
                pacer.pause(wait)
                delay *= 2
                with lock:
                    counts["retries"] += 1
                continue
            cache.put(key, data)
            with lock:
                if data is None:
                    counts["missing"] += 1
                else:
                    counts["bytes"] += len(data)
            return

    with ThreadPoolExecutor(opts.workers) as pool, tqdm(
            total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="tile",
            disable=not progress) as bar:
        futures = [pool.submit(one, k, u) for k, u in todo]
        try:
            for f in as_completed(futures):
                f.result()
                bar.update(1)
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    missing_total = sum(1 for k, _ in jobs if cache.state(k) == "missing")
    return DownloadStats(len(jobs), len(jobs) - len(todo), len(todo) - counts["missing"],
                         missing_total, counts["retries"], counts["bytes"],
                         time.monotonic() - t0)
