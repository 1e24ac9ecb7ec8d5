"""plot.png of a SITL flight: the autopilot's EKF position against the simulator's truth
over time (horizontal error, and east/north tracks), with the GNSS-off period and the
camera-blank windows shaded."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (as runtime/apps/report.py)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skyfix.sim.sitl_report import FlightRecord, Timeline, Truth, horizontal_errors  # noqa: E402


def plot_flight(rec: FlightRecord, tl: Timeline, crs, path: Path) -> None:
    truth = Truth(rec.array("truth"), crs)
    ekf, sent = rec.array("ekf"), rec.array("sent")
    t0 = tl.mission_start_ns or (truth.t[0] if truth.t.size else 0)

    def s(t: np.ndarray) -> np.ndarray:
        return (t - t0) * 1e-9

    fig, (ax_err, ax_en) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    t_e, e_e = horizontal_errors(truth, ekf)
    ax_err.plot(s(t_e), e_e, lw=1, label="EKF (GLOBAL_POSITION_INT) vs truth")
    if sent.size:
        claimed = sent[sent[:, 3] >= 3]
        t_c, e_c = horizontal_errors(truth, claimed)
        ax_err.plot(s(t_c), e_c, ".", ms=1.5, label="skyfix GPS_INPUT (3D fix) vs truth")
    ax_err.set_ylabel("horizontal error (m)")
    ax_err.set_ylim(bottom=0.0)
    if truth.t.size and ekf.size:
        en_ekf = truth.to_en(ekf[:, 1], ekf[:, 2])
        for i, axis in enumerate(("east", "north")):
            ax_en.plot(s(truth.t), truth.en[:, i] - truth.en[0, i], lw=1.5,
                       label=f"truth {axis}")
            ax_en.plot(s(ekf[:, 0]), en_ekf[:, i] - truth.en[0, i], "--", lw=1,
                       label=f"EKF {axis}")
    ax_en.set_ylabel("position from home (m)")
    ax_en.set_xlabel("time from arming (s)")
    for ax in (ax_err, ax_en):
        if tl.gnss_off_ns is not None:
            end = tl.landed_ns or (truth.t[-1] if truth.t.size else tl.gnss_off_ns)
            ax.axvspan(s(tl.gnss_off_ns), s(end), color="orange", alpha=0.15,
                       label="GNSS off" if ax is ax_err else None)
        for k, (a, b) in enumerate(tl.blank_windows_ns):
            ax.axvspan(s(a), s(b), color="black", alpha=0.2,
                       label="camera blank" if ax is ax_err and k == 0 else None)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
