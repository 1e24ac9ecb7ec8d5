"""A region pack in flight: a sim flight replayed over a map pack and over the same pack cut
into shards gives the same fixes, also when the memory budget holds only a few shards at a
time (shards are evicted and loaded again); the CLI replays a sharded pack by its folder;
a damaged shard stops the flight with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from skyfix.maps.shard_write import shard_pack
from skyfix.maps.shards import ShardedPack
from skyfix.runtime.apps.cli import main
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Fix
from skyfix.sim.flight import FlightSpec, simulate_flight

CELL_M = 120.0  # several shards over the bundled orthophoto


@pytest.fixture(scope="module")
def region(tmp_path_factory, ortho_path, ortho_pack):
    """(root, plain replay result): a flight, its pack, and the pack sharded."""
    root = tmp_path_factory.mktemp("region")
    spec = FlightSpec(agl_m=120.0, duration_s=12.0, fps=2.0, seed=5)
    simulate_flight(ortho_path, root / "flight", spec, progress=False)
    shard_pack(ortho_pack, root / "sharded", CELL_M, progress=False)
    plain = replay(root / "flight", ortho_pack, root / "out_plain", Config(), 0.0,
                   progress=False)
    return root, plain


def _fixes(result) -> list[tuple[int, float, float] | str]:
    """Per frame: (t_ns, east, north) of a fix, or the rejection reason."""
    return [(r.t_ns, r.result.east_m, r.result.north_m) if isinstance(r.result, Fix)
            else r.result.reason for r in result.frames]


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, str) or isinstance(y, str):
            assert x == y
        else:
            assert x[0] == y[0] and np.hypot(x[1] - y[1], x[2] - y[2]) < 1e-3, (x, y)


def test_sharded_pack_under_a_tight_budget_gives_the_same_fixes(region):
    root, plain = region
    sharded = ShardedPack.open(root / "sharded")
    n_shards = len(sharded.manifest.shards)
    assert n_shards >= 4
    sizes = sorted(s.resident_bytes for s in sharded.manifest.shards)
    budget = sizes[-1] + sizes[-2]  # two shards at most: a window over a cell edge
    tight = ShardedPack.open(root / "sharded", budget_bytes=budget)
    result = replay(root / "flight", tight, root / "out_tight", Config(), 0.0, progress=False)
    fixes = _fixes(plain)
    assert sum(isinstance(f, tuple) for f in fixes) >= 0.6 * len(fixes)
    _same(fixes, _fixes(result))
    assert tight.resident_bytes <= budget
    assert tight.loads > n_shards  # shards were dropped and loaded again
    a = json.loads((root / "out_plain" / "report.json").read_text())
    b = json.loads((root / "out_tight" / "report.json").read_text())
    assert a["fixes"] == b["fixes"] and abs(a["fix_cep50_m"] - b["fix_cep50_m"]) < 1e-3


def test_cli_replays_a_sharded_pack_folder(region, capsys):
    root, plain = region
    out = root / "out_cli"
    assert main(["replay", str(root / "flight"), "--map", str(root / "sharded"),
                 "--out", str(out)]) == 0
    a = json.loads((root / "out_plain" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert a["fixes"] == b["fixes"] and abs(a["est_cep50_m"] - b["est_cep50_m"]) < 1e-3


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_shard_stops_the_replay_with_one_line(region, tmp_path, capsys, damage):
    root, _ = region
    copy = tmp_path / "sharded"
    shutil.copytree(root / "sharded", copy)
    for victim in sorted(copy.glob("cell_*/local_descriptors.npy")):  # every shard
        if damage == "corrupt":
            data = bytearray(victim.read_bytes())
            data[-1] ^= 0xFF
            victim.write_bytes(bytes(data))
        else:
            victim.unlink()
    sharded = ShardedPack.open(copy)  # shards are checked as they are loaded
    with pytest.raises(SkyfixError) as e:
        sharded.shard(1)
    why = "sha256 mismatch" if damage == "corrupt" else "is missing"
    name = sharded.manifest.shards[1].name
    assert why in str(e.value) and f"{name}/local_descriptors.npy" in str(e.value)
    assert "\n" not in str(e.value)
    code = main(["replay", str(root / "flight"), "--map", str(copy),
                 "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("replay:")]  # the progress bar
    assert code != 0 and len(err) == 1 and why in err[0], err
