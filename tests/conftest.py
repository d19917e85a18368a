"""Shared fixtures (small exported models, built once per test session) and the one gate for
tests that need the native kernel library: mark them ``@pytest.mark.native``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import export_torch

from analog_onnx.runtime import REQUIRE_NATIVE_ENV, native_library_path, native_required


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``native`` test when the library is not built, or fail it when CI requires it."""
    if item.get_closest_marker("native") is None or native_library_path() is not None:
        return
    message = "native kernels are not built: run `analog-onnx kernels build`"
    if native_required():
        pytest.fail(f"{REQUIRE_NATIVE_ENV}=1 but {message}")
    pytest.skip(message)


def _architectures():
    import torch
    from torch import nn

    class ResidualCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(y + self.block(y))
            return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 5))
    depthwise = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                              nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 5))
    cnn = ResidualCNN()
    for module in (cnn, depthwise):  # non-trivial BatchNorm statistics
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return {"mlp": mlp, "cnn": cnn, "depthwise": depthwise}


@pytest.fixture(scope="session")
def exported_models() -> dict[str, onnx.ModelProto]:
    """MLP, CNN with BatchNorm and a residual add, depthwise CNN: TorchScript exports, opset 17."""
    import torch

    example = torch.randn(2, 3, 4, 4)
    return {name: export_torch(module, example) for name, module in _architectures().items()}


@pytest.fixture(scope="session")
def dynamo_models() -> dict[str, onnx.ModelProto]:
    """The same architectures through the dynamo exporter (opset 18)."""
    import torch

    example = torch.randn(2, 3, 4, 4)
    return {name: export_torch(module, example, dynamo=True, opset=18) for name, module in _architectures().items()}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args)`` runs ``analog-onnx ARGS`` in this process: (exit code, stdout, stderr)."""
    import signal
    import sys

    from analog_onnx.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        old_argv, old_handler = sys.argv, signal.getsignal(signal.SIGTERM)
        sys.argv = ["analog-onnx", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        finally:
            sys.argv = old_argv
            signal.signal(signal.SIGTERM, old_handler)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def mlp_file(tmp_path_factory) -> object:
    """helpers.digits_mlp() saved as a file, for commands that read a model from disk."""
    from helpers import digits_mlp

    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(digits_mlp(), path)
    return path
