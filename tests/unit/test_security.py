"""Security properties a flight computer relies on: MAVLink 2 signing end to end over
real sockets, the signing key's file permissions, sha256 checks of map packs and models
at load, no pickle anywhere in the source, and a hardened systemd unit."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import small_pack
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.models.xfeat import XFeatEncoder
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.flight.assembly import assemble, build_chain
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.mavlink import (
    SIGNING_EPOCH_UNIX_S,
    advance_signing_clock,
    heartbeat,
    load_signing_key,
)
from skyfix.runtime.io.telemetry import open_link
from skyfix.sim.closed_loop import free_udp_port

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(100, 132))


def key_file(path: Path, mode: int = 0o600, data: bytes = KEY) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def signed_stamp(msg) -> int:
    """The 48-bit signing timestamp of a received signed MAVLink 2 message."""
    buf = bytes(msg.get_msgbuf())
    return int.from_bytes(buf[-12:-6], "little")


def drain(conn, seconds: float) -> list:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        m = conn.recv_match(blocking=True, timeout=0.1)
        if m is not None:
            out.append(m)
    return out


def test_signed_link_end_to_end(tmp_path):
    """Both ends opened with `open_link` from a key file: signed messages are accepted,
    unsigned and wrong-key ones refused, and our signing timestamps only ever go up,
    even when the wall clock steps back."""
    key = load_signing_key(key_file(tmp_path / "signing.key"))
    port = free_udp_port()
    ours = open_link(f"udpin:127.0.0.1:{port}", 1, 191, key, refuse_unsigned=True, link_id=2)
    autopilot = open_link(f"udpout:127.0.0.1:{port}", 1, 1, key, refuse_unsigned=True)
    plain = open_link(f"udpout:127.0.0.1:{port}", 1, 1)
    stranger = open_link(f"udpout:127.0.0.1:{port}", 1, 1, bytes(32))
    try:
        vehicle = mav2.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3)  # a quadrotor, ArduPilot
        plain.mav.send(vehicle)
        stranger.mav.send(vehicle)
        time.sleep(0.05)
        autopilot.mav.send(vehicle)  # the first valid signed HEARTBEAT names the peer
        got = drain(ours, 0.5)
        good = [m for m in got if m.get_type() == "HEARTBEAT"]
        assert len(good) == 1 and good[0].get_signed()
        assert sum(m.get_type() == "BAD_DATA" for m in got) == 2  # unsigned + wrong key
        assert ours.mav.signing.reject_count == 2

        # our replies: the signing clock follows the wall clock but never goes back
        now = time.time_ns()
        clock = [now, now + 10**9, now - 3600 * 10**9, now + 2 * 10**9, now + 2 * 10**9]
        for t in clock:
            advance_signing_clock(ours, t)
            ours.mav.send(heartbeat())
        replies = [m for m in drain(autopilot, 0.5) if m.get_type() == "HEARTBEAT"]
        assert len(replies) == len(clock) and all(m.get_signed() for m in replies)
        stamps = [signed_stamp(m) for m in replies]
        assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
        assert stamps[0] >= (now // 10**9 - SIGNING_EPOCH_UNIX_S) * 100_000
        assert autopilot.mav.signing.goodsig_count == len(clock)
        assert autopilot.mav.signing.badsig_count == 0
    finally:
        for conn in (ours, autopilot, plain, stranger):
            conn.close()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_daemon_refuses_a_key_others_can_read(tmp_path, mode):
    cfg = Config()
    path = key_file(tmp_path / "signing.key", mode)
    cfg = replace(cfg, output=replace(cfg.output, signing_key=str(path)),
                  daemon=replace(cfg.daemon, link="udpin:127.0.0.1:0"))
    with pytest.raises(SkyfixError, match=f"chmod 600 {re.escape(str(path))}") as exc:
        Daemon(assemble(cfg, None, None, None), LatestFrameQueue(2))  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return small_pack(tmp_path_factory.mktemp("security_pack"), 300)


@pytest.mark.parametrize("name", ["descriptors.npy", "ortho.tif", "manifest.json"])
def test_daemon_refuses_a_map_pack_with_one_flipped_byte(pack, tmp_path, name):
    camera = CameraModel(640, 480, 500.0, 500.0, 319.5, 239.5)
    build_chain(Config(), pack, camera)  # the intact pack loads
    bad = tmp_path / "pack"
    shutil.copytree(pack, bad)
    data = bytearray((bad / name).read_bytes())
    data[len(data) // 3] ^= 0x10
    (bad / name).write_bytes(bytes(data))
    with pytest.raises(SkyfixError, match=re.escape(name)) as exc:
        build_chain(Config(), bad, camera)
    assert "\n" not in str(exc.value)


def test_model_with_one_flipped_byte_is_refused(tmp_path):
    src = REPO / "models" / "weights" / "xfeat.onnx"
    model = tmp_path / "xfeat.onnx"
    shutil.copy(src, model)
    shutil.copy(src.with_name("xfeat.onnx.json"), tmp_path / "xfeat.onnx.json")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(SkyfixError, match="sha256 .* does not match its manifest") as exc:
        XFeatEncoder(model_path=model)
    assert "\n" not in str(exc.value)


# Built from pieces so that this file does not match itself.
_LIBS = "c?" + "pickle|cloud" + "pickle|dill|joblib|shelve"
_PICKLE = re.compile(rf"\b(import|from)\s+({_LIBS})\b|\b({_LIBS})\.(loads?|open|Unpickler)\b"
                     r"|\bread_" + r"pickle\(", re.I)
_ALLOW = re.compile(r"allow_" + r"pickle\s*=\s*True")
_TORCH_LOAD = re.compile(r"torch\." + r"load\(([^()]|\([^()]*\))*\)", re.S)


def _source_files() -> list[Path]:
    """The project's own source: git's tracked and not-ignored files, else the packages."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        names = [REPO / n for n in out.split()]
    except (OSError, subprocess.CalledProcessError):
        names = [p for d in ("runtime", "models", "maps", "calibration", "sim", "tests",
                             "benchmarks") for p in (REPO / d).rglob("*.py")]
    return [p for p in names if p.suffix in (".py", ".toml", ".cfg", ".txt")
            and p.is_file() and p.resolve() != Path(__file__).resolve()]


def test_no_pickle_anywhere_in_the_source():
    files = _source_files()
    assert any(p.name == "pack.py" for p in files)  # the walk found the source
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(REPO)
        found += [f"{rel}: {m.group(0)}" for m in _PICKLE.finditer(text)]
        found += [f"{rel}: {m.group(0)}" for m in _ALLOW.finditer(text)]
        found += [f"{rel}: {m.group(0)}" for m in _TORCH_LOAD.finditer(text)
                  if not re.search(r"weights_only\s*=\s*True", m.group(0))]
    assert not found, "pickle-based loading in the source: " + "; ".join(found)


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit file -> {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path}: not a unit line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_hardened():
    service = _unit(REPO / "configs" / "skyfix.service")["Service"]

    def one(key: str) -> str:
        assert key in service, f"skyfix.service sets no {key}"
        return service[key][-1]

    assert one("User") not in ("", "root", "0") and "DynamicUser" not in service
    assert one("Group") not in ("", "root", "0")
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes"
    assert one("ProtectHome") in ("yes", "read-only", "tmpfs")
    assert one("DevicePolicy") == "closed"
    allowed = service["DeviceAllow"]
    assert allowed, "no device allow-list"
    for entry in allowed:
        device, _, access = entry.partition(" ")
        assert access and set(access) <= set("rwm"), entry
        assert device.startswith(("/dev/", "char-", "block-")), entry
        assert "*" not in device and device not in ("/dev/", "char-*", "block-*"), entry
    assert not service.get("AmbientCapabilities", [""])[-1]  # no capabilities granted
    exec_start = one("ExecStart")
    assert " run " in f" {exec_start} " and not re.search(r"\bsudo\b", exec_start)
    # the ExecStart binary is the installed entry point, not a shell
    assert not exec_start.split()[0].endswith(("/sh", "/bash"))
    np.testing.assert_equal(len(allowed), len(set(allowed)))  # no duplicated entries
