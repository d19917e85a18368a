"""The native kernel library is loaded only when it is what the build wrote, from a cache folder
no other user can write to, found from an absolute path."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from analog_onnx.cache import cache_dir
from analog_onnx.errors import AnalogError
from analog_onnx.ops.native import build

ROOT = Path(__file__).parents[1]


def installed_library() -> Path | None:
    """The user's own built library (any build key), to stand in for a fresh build."""
    found = sorted((Path.home() / ".cache" / "analog-onnx" / "kernels").glob(f"*/{build.LIBRARY_NAME}"))
    return found[0] if found else None


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def plant(data: bytes, *, recorded: bytes | None = None) -> Path:
    """A library file in the cache, with a build record of ``recorded`` (default: ``data``)."""
    path = build.library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(recorded if recorded is not None else data)
    (path.parent / build.RECORD_NAME).write_text(json.dumps(build._record(path)))
    path.write_bytes(data)
    return path


def test_a_library_that_differs_from_its_record_is_never_loaded(cache):
    plant(b"\x7fELF" + b"\0" * 500, recorded=b"\x7fELF" + b"\0" * 1000)
    with pytest.raises(AnalogError, match=r"is damaged \(504 bytes, the build wrote 1004\).*kernels build"):
        build.built_library()
    status = build.kernel_status()
    assert status.built and "damaged" in status.error and status.ops == []


def test_a_truncated_real_library_gives_one_line_not_sigbus(cache):
    real = installed_library()
    if real is None:
        pytest.skip("no built library to truncate (run `analog-onnx kernels build`)")
    full = real.read_bytes()
    plant(full[: len(full) // 3], recorded=full)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (["kernels", "status"], ["presets"]):
        result = subprocess.run([sys.executable, "-m", "analog_onnx.cli", *command], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 0, (command, result.returncode, result.stderr)
    status = subprocess.run([sys.executable, "-m", "analog_onnx.cli", "kernels", "status"], capture_output=True,
                            text=True, env=env, timeout=120).stdout
    assert "broken" in status and "damaged" in status


@pytest.fixture
def copying_compiler(tmp_path, monkeypatch) -> Path:
    """A stand-in C++ compiler that 'builds' the user's installed library (no minute of g++)."""
    real = installed_library()
    if real is None:
        pytest.skip("no built library to copy (run `analog-onnx kernels build`)")
    script = tmp_path / "fake-cxx"
    script.write_text(f'#!/bin/sh\nfor a; do out="$a"; done\ncp "{real}" "$out"\n')  # -o OUT is last
    script.chmod(0o755)
    monkeypatch.setenv("CXX", str(script))
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 17\n")
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(headers))
    return real


def test_kernels_build_rebuilds_a_damaged_library(cache, copying_compiler, run_cli):
    path = plant(b"half a library", recorded=b"a whole library")
    code, out, err = run_cli("kernels", "build")
    assert code == 0, err
    assert out.startswith("built:") and path.read_bytes() == copying_compiler.read_bytes()
    assert build.built_library() == path
    code, out, _ = run_cli("kernels", "build")
    assert code == 0 and out.startswith("up to date:")


def test_kernels_build_into_an_unwritable_cache_is_one_line(tmp_path, monkeypatch, copying_compiler, run_cli):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path / "a-file" / "cache"))
    code, _, err = run_cli("kernels", "build")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "cannot write the native kernels" in errors[0] and "Traceback" not in err


@pytest.mark.parametrize(("variable", "value"), [("ANALOG_ONNX_CACHE", "cache"), ("HOME", ".")])
def test_relative_cache_roots_are_refused(monkeypatch, variable, value):
    monkeypatch.delenv("ANALOG_ONNX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(AnalogError, match=f"\\${variable} is the relative path"):
        cache_dir()


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("ANALOG_ONNX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "planted")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == tmp_path / ".cache" / "analog-onnx"


def test_a_cache_folder_others_can_write_is_not_trusted(cache):
    path = plant(b"library")
    folder = path.parent
    folder.chmod(folder.stat().st_mode | stat.S_IWOTH)
    with pytest.raises(AnalogError, match="writable by every user"):
        build.built_library()
    with pytest.raises(AnalogError, match="writable by every user"):
        build.build_library()
    folder.chmod(0o755)
    if os.getuid() == 0:  # only root can give a folder away
        os.chown(cache, 54321, -1)
        with pytest.raises(AnalogError, match="belongs to another user"):
            build.built_library()
        shutil.rmtree(cache)
