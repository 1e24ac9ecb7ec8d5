"""A simulated IMU: what the autopilot's accelerometers and gyros read along a true
trajectory, and the SCALED_IMU messages that carry it.

Each axis reads truth + bias + white noise. The bias is drawn at power-on (1-sigma
`*_bias_sigma_*`) and then walks (random walk, `*_bias_rw_*` per root second); the white
noise has the density `*_noise_*` per root Hz, so a sample at rate f has 1-sigma
density * sqrt(f). The defaults describe a MEMS IMU on a multicopter after the
autopilot's calibration and low-pass filtering (vibration included in the noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2

G_MPS2 = 9.80665
_MAG_NED_MGAUSS = np.array([210.0, 15.0, 440.0])  # central Europe, about 21, 1.5, 44 uT


@dataclass(frozen=True)
class ImuSpec:
    rate_hz: float = 100.0
    accel_noise_mps2_rthz: float = 0.01
    accel_bias_sigma_mps2: float = 0.05
    accel_bias_rw_mps2_rths: float = 0.001
    gyro_noise_radps_rthz: float = 0.001
    gyro_bias_sigma_radps: float = 0.002
    gyro_bias_rw_radps_rths: float = 1e-4

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"IMU rate must be positive, got {self.rate_hz}")


class ImuSensor:
    """One IMU from power-on: `measure` returns readings for increasing times, the biases
    carried on from call to call."""

    def __init__(self, spec: ImuSpec, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng
        self.accel_bias_mps2 = rng.normal(0.0, spec.accel_bias_sigma_mps2, 3)
        self.gyro_bias_radps = rng.normal(0.0, spec.gyro_bias_sigma_radps, 3)
        self._t_s: float | None = None

    def measure(self, t_s: np.ndarray, f_body_mps2: np.ndarray, w_body_radps: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(accel [N, 3] m/s^2, gyro [N, 3] rad/s) read at increasing times `t_s` [N] for the
        true specific force `f_body_mps2` [N, 3] and body rates `w_body_radps` [N, 3]."""
        s, rng = self.spec, self.rng
        t = np.asarray(t_s, np.float64)
        prev = t[0] if self._t_s is None else self._t_s
        dt = np.diff(np.concatenate([[prev], t]))
        if np.any(dt < 0):
            raise ValueError("IMU sample times must increase")
        root = np.sqrt(dt)[:, None]
        acc_bias = self.accel_bias_mps2 + np.cumsum(
            rng.normal(0.0, s.accel_bias_rw_mps2_rths, (len(t), 3)) * root, 0)
        gyro_bias = self.gyro_bias_radps + np.cumsum(
            rng.normal(0.0, s.gyro_bias_rw_radps_rths, (len(t), 3)) * root, 0)
        rt = np.sqrt(s.rate_hz)
        acc = f_body_mps2 + acc_bias + rng.normal(0.0, s.accel_noise_mps2_rthz * rt, (len(t), 3))
        gyro = w_body_radps + gyro_bias + rng.normal(0.0, s.gyro_noise_radps_rthz * rt,
                                                     (len(t), 3))
        self.accel_bias_mps2, self.gyro_bias_radps = acc_bias[-1], gyro_bias[-1]
        self._t_s = float(t[-1])
        return acc, gyro


def scaled_imu(mav: mav2.MAVLink, boot_ms: int, accel_mps2: np.ndarray, gyro_radps: np.ndarray,
               R_ned_body: np.ndarray) -> mav2.MAVLink_message:
    """SCALED_IMU of one reading (milli-g, mrad/s; magnetometer: the nominal field in body
    axes, milligauss), as ArduPilot sends its first IMU."""
    acc = np.clip(np.round(accel_mps2 / G_MPS2 * 1000), -32768, 32767).astype(int)
    gyro = np.clip(np.round(gyro_radps * 1000), -32768, 32767).astype(int)
    mag = np.round(R_ned_body.T @ _MAG_NED_MGAUSS).astype(int)
    return mav.scaled_imu_encode(int(boot_ms) & 0xFFFFFFFF, *acc.tolist(), *gyro.tolist(),
                                 *mag.tolist(), 3500)
