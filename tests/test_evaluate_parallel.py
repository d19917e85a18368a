"""Parallel backends give exactly the numbers of the in-process run for the same seed."""

from __future__ import annotations

import socket

import pytest
from helpers import digits_mlp

from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import RunSettings, evaluate, sensitivity

LEVELS = [0.0, 0.3, 1.0]


def sweep(**settings):
    """Two models x three levels x two repeats: 12 units."""
    return evaluate([digits_mlp(32), digits_mlp(16)], "digits", config="hardening-additive", noise_scales=LEVELS,
                    settings=RunSettings(repeats=2, seed=3, batch_size=100, **settings), names=["a", "b"])


@pytest.fixture(scope="module")
def local_report():
    return sweep()


@pytest.mark.slow
def test_worker_processes_equal_the_local_run(local_report):
    assert sweep(workers=2).to_dict() == local_report.to_dict()


@pytest.mark.slow
def test_ray_equals_the_local_run(local_report):
    """A local 2-CPU Ray that the engine starts and stops itself, for a sweep and a sensitivity run."""
    pytest.importorskip("ray")
    progress = []
    report = evaluate([digits_mlp(32), digits_mlp(16)], "digits", config="hardening-additive", noise_scales=LEVELS,
                      settings=RunSettings(repeats=2, seed=3, batch_size=100, backend="ray", workers=2),
                      names=["a", "b"], progress=lambda done, total: progress.append((done, total)))
    assert report.to_dict() == local_report.to_dict()
    assert progress[-1] == (12, 12)
    local = sensitivity(digits_mlp(), "digits", config="hardening-additive", noise_scale=0.5,
                        settings=RunSettings(repeats=2, seed=1))
    remote = sensitivity(digits_mlp(), "digits", config="hardening-additive", noise_scale=0.5,
                         settings=RunSettings(repeats=2, seed=1, backend="ray", workers=2))
    assert remote.to_dict() == local.to_dict()


def test_an_unreachable_ray_address_fails_fast():
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AnalogError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
        evaluate(digits_mlp(), "digits", config="hardening-additive", noise_scales=[1.0],
                 settings=RunSettings(repeats=1, seed=0, backend="ray", ray_address=f"127.0.0.1:{port}"))
    with pytest.raises(AnalogError, match="must be HOST:PORT"):
        evaluate(digits_mlp(), "digits", config="hardening-additive", noise_scales=[1.0],
                 settings=RunSettings(repeats=1, seed=0, backend="ray", ray_address="nonsense"))
