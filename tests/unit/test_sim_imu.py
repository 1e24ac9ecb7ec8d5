"""The simulated IMU: white noise of the stated density, a power-on bias that walks at the
stated rate, truth underneath; and SCALED_IMU carries it in milli-g and mrad/s."""

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav

from skyfix.runtime.io.telemetry import parse_message
from skyfix.sim.imu import G_MPS2, ImuSensor, ImuSpec, scaled_imu


def test_noise_and_bias_statistics():
    spec = ImuSpec(rate_hz=200.0, accel_bias_rw_mps2_rths=0.0, gyro_bias_rw_radps_rths=0.0)
    sensor = ImuSensor(spec, np.random.default_rng(0))
    n = 20_000
    t = np.arange(n) / spec.rate_hz
    f = np.tile([0.0, 0.0, -G_MPS2], (n, 1))
    acc, gyro = sensor.measure(t, f, np.zeros((n, 3)))
    err = acc - f
    np.testing.assert_allclose(err.std(0), spec.accel_noise_mps2_rthz * np.sqrt(200), rtol=0.03)
    np.testing.assert_allclose(err.mean(0), sensor.accel_bias_mps2, atol=0.003)
    np.testing.assert_allclose(gyro.std(0), spec.gyro_noise_radps_rthz * np.sqrt(200), rtol=0.03)


def test_bias_walks_at_the_stated_rate_across_calls():
    spec = ImuSpec(rate_hz=10.0, accel_noise_mps2_rthz=0.0, gyro_noise_radps_rthz=0.0,
                   accel_bias_rw_mps2_rths=0.01)
    walked = []
    for seed in range(300):
        sensor = ImuSensor(spec, np.random.default_rng(seed))
        b0 = sensor.accel_bias_mps2.copy()
        for k in range(10):  # 10 calls of 10 s: the walk continues from call to call
            t = 10 * k + np.arange(1, 101) / 10.0
            acc, _ = sensor.measure(t, np.zeros((100, 3)), np.zeros((100, 3)))
        walked.append(acc[-1] - b0)
    np.testing.assert_allclose(np.std(walked), 0.01 * np.sqrt(100.0 - 0.1), rtol=0.1)
    with pytest.raises(ValueError):
        sensor.measure(np.array([1.0]), np.zeros((1, 3)), np.zeros((1, 3)))


def test_scaled_imu_round_trip():
    m = scaled_imu(mav.MAVLink(None), 1234, np.array([0.5, -0.3, -9.9]),
                   np.array([0.01, -0.2, 0.05]), np.eye(3))
    _, row = parse_message(m, 0)
    np.testing.assert_allclose(row[1:4], [0.5, -0.3, -9.9], atol=G_MPS2 * 5e-4)
    np.testing.assert_allclose(row[4:7], [0.01, -0.2, 0.05], atol=5e-4)
