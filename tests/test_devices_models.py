"""Each device model is defined once, by its class in analog_onnx/devices, and every implementation
follows it: the HERMES PCM fit is aihwkit's published model, the native physics computes the numpy
reference's numbers for every registered model, the traced function body too, and a ReRAM fit at a
fourth time reaches all of them by its data alone."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper as h

from analog_onnx.devices import make_device, reram
from analog_onnx.devices.config import CONFIG_KEYS, DEVICE_PARAMETERS, DeviceConfig
from analog_onnx.devices.hermes import HermesPCMDevice
from analog_onnx.devices.registry import DEVICE_CLASSES, parameters
from analog_onnx.devices.reram import DAY, Fit
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.device_functions import device_functions
from analog_onnx.ops.native import build, generate

F32 = np.float32


class edited:  # noqa: N801 (stands for the module)
    """devices/reram.py as it reads after one more fit is added to it (a made-up fit a week after programming)."""

    @dataclasses.dataclass(frozen=True)
    class ReRAMDevice(reram.ReRAMDevice):
        fits: tuple[Fit, ...] = (*reram.ReRAMDevice.fits, Fit(7 * DAY, (0.9, 19.0, -40.0, 33.0, -10.5)))


FOURTH_FIT = {**DEVICE_CLASSES, "reram": edited.ReRAMDevice}  # the registry, with that ReRAMDevice


SETTINGS = {"pcm": {}, "reram": {"g_max": 40.0}, "pcm-hermes": {"g_max": 20.7},
            "generic": {"prog_noise_add": 0.01, "prog_noise_rel": 0.05, "drift_nu": 0.05, "drift_nu_std": 0.02,
                        "read_noise_rel": 0.02}}
TIMES = (0.0, 1.0, 60.0, 3600.0, 1.5 * DAY, 2 * DAY, 5 * DAY, 7 * DAY, 30 * DAY)


def states(g_max: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets across [0, g_max] (every branch threshold crossed), programmed values, normals."""
    target = np.concatenate([np.linspace(0, g_max, 401), [0.0945 * g_max, 0.16 * g_max, 0.3055 * g_max, 1e-9]])
    target = target.astype(F32)
    programmed = np.abs(target + rng.standard_normal(target.size).astype(F32)).astype(F32)
    return target, programmed, rng.standard_normal(target.size).astype(F32)


def device(cls: type, settings: dict) -> object:
    config = DeviceConfig(**{k: v for k, v in settings.items() if k in CONFIG_KEYS})
    return cls(**{key: getattr(config, key) for key in parameters(cls, CONFIG_KEYS)})


# -- the HERMES fit is aihwkit's ----------------------------------------------------------------------
def aihwkit_hermes(g_target: np.ndarray, g_prog: np.ndarray, z: np.ndarray, t_inference: float, g_max: float):
    """aihwkit's HermesNoiseModel with two devices per weight, written from its published branches
    (float64): programming sigma, the drifted conductance for the drift normals z, the read sigma."""
    x = np.abs(g_target / g_max).clip(1e-7)
    sigma = np.polynomial.polynomial.polyval(g_target / g_max, [0.16603222, 4.71806468, -8.48101252, 4.68961419])
    sigma = sigma * g_max / 20.7
    mean = np.where(x < 0.0945, (-0.0387 * np.log(x) - 0.0182).clip(0.0720, 0.13), -0.0436 * x**2 - 0.0126 * x + 0.0736)
    spread = np.where(x < 0.3055, (-0.0117 * np.log(x) - 0.0057).clip(0.0091, 0.04),
                      -0.0118 * x**2 + 0.0093 * x + 0.0073)
    t = t_inference + 300.0
    drifted = g_prog * (t / 300.0) ** -np.abs(mean + spread * z)
    r = np.abs(g_prog) / g_max
    with np.errstate(divide="ignore"):
        q_s = np.where(r < 0.16, (-0.0117 * np.log(r) - 0.0069).clip(0.015, 0.04),
                       0.0069 * r**3 - 0.0280 * r**2 + 0.0211 * r + 0.0123)
    read = np.abs(drifted) * q_s * np.sqrt(np.log((t + 512e-9) / (2 * 512e-9)))
    return sigma, drifted, read


@pytest.mark.parametrize("t", TIMES)
def test_hermes_is_aihwkits_published_fit(t, rng):
    model = HermesPCMDevice(g_max=20.7)
    target, programmed, z = states(20.7, rng)
    sigma, drifted, read = aihwkit_hermes(target.astype(float), programmed.astype(float), z.astype(float), t, 20.7)
    np.testing.assert_allclose(model.programming_sigma(target), sigma, rtol=2e-6, atol=1e-6)
    ours = model.drift(target, programmed, z, t)
    np.testing.assert_allclose(ours, drifted, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(model.read_noise_sigma(programmed, ours, t), read, rtol=2e-6, atol=1e-7)


def test_hermes_differs_from_the_first_pcm_fit(rng):
    """Not a relabelled PCMDevice: at the same g_max its programming noise and drift differ."""
    target, programmed, z = states(20.7, rng)
    hermes, pcm = HermesPCMDevice(g_max=20.7), make_device(DeviceConfig(model="pcm", g_max=20.7))
    assert np.abs(hermes.programming_sigma(target) - pcm.programming_sigma(target)).max() > 0.1
    assert np.abs(hermes.drift(target, programmed, z, 3600.0) - pcm.drift(target, programmed, z, 3600.0)).max() > 0.01


# -- the native physics and the traced function bodies compute the classes' numbers ------------------
PROBE = r"""
#include <cstdio>
#include <cstdlib>
#include <string>
#include "device_physics.h"
using namespace analog;

// Reads "g_target g_prog z" lines; prints programming sigma, drift and read sigma (g_now = g_target).
template <class C>
void probe(const DeviceSettings& s, float t) {
  const Physics<C> model(s, t);
  float g, p, z;
  while (std::scanf("%f %f %f", &g, &p, &z) == 3) {
    std::printf("%.9g %.9g %.9g\n", model.programming_sigma(g), model.drift(g, p, z, s.prog_noise_scale),
                model.read_sigma(p, g));
  }
}

int main(int, char** argv) {
  float v[9];
  for (int i = 0; i < 9; ++i) v[i] = std::strtof(argv[3 + i], nullptr);  // the settings below, in order
  const DeviceSettings s{argv[1], v[0], v[1], v[2], v[3], 0.0f, 0.0f, true, true, true, v[4], v[5], v[6], v[7], v[8],
                         0, false, 0};
  const std::string name = argv[1];
  const float t = std::strtof(argv[2], nullptr);
#define PROBE(text, Class) \
  if (name == text) probe<devices::Class>(s, t);
  ANALOG_DEVICE_MODELS(PROBE)
}
"""
PROBE_SETTINGS = ("g_max", "prog_noise_scale", "drift_scale", "read_noise_scale", "prog_noise_add", "prog_noise_rel",
                  "drift_nu", "drift_nu_std", "read_noise_rel")


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[int, Path]:
    """The probe compiled with the header generated for the registry, and for FOURTH_FIT."""
    return {id(devices): compile_probe(tmp_path_factory.mktemp("probe"), devices)
            for devices in (DEVICE_CLASSES, FOURTH_FIT)}


def compile_probe(folder: Path, devices: dict) -> Path:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    (folder / generate.HEADER_NAME).write_text(generate.header(devices))
    (folder / "probe.cc").write_text(PROBE)
    flags = [f for f in build.CXXFLAGS if f not in ("-shared", "-fPIC", "-fvisibility=hidden")]
    done = subprocess.run([compiler, *flags, "-I", str(folder), "-I", str(build.SOURCE_DIR), str(folder / "probe.cc"),
                           "-o", str(folder / "probe")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "probe"


def native(probe: Path, name: str, settings: dict, t: float, target, programmed, z) -> np.ndarray:
    config = DeviceConfig(**{k: v for k, v in settings.items() if k in CONFIG_KEYS})
    lines = "\n".join(f"{a!r} {b!r} {c!r}" for a, b, c in zip(target.tolist(), programmed.tolist(), z.tolist(),
                                                                strict=True))
    args = [str(probe), name, repr(t), *(repr(float(getattr(config, key))) for key in PROBE_SETTINGS)]
    out = subprocess.run(args, input=lines, capture_output=True, text=True, check=True).stdout
    return np.array([line.split() for line in out.splitlines()], F32).T


def reference(cls: type, settings: dict, t: float, target, programmed, z) -> list[np.ndarray]:
    model = device(cls, settings)
    return [model.programming_sigma(target), model.drift(target, programmed, z, t),
            model.read_noise_sigma(programmed, target, t)]


CASES = [pytest.param(DEVICE_CLASSES, name, id=name) for name in DEVICE_CLASSES]
CASES.append(pytest.param(FOURTH_FIT, "reram", id="reram with a fourth fit"))


@pytest.mark.parametrize(("devices", "name"), CASES)
def test_native_physics_computes_the_device_classes_numbers(probes, devices, name, rng):
    cls, settings = devices[name], SETTINGS[name]
    target, programmed, z = states(settings.get("g_max", 25.0), rng)
    for t in TIMES:
        for got, want in zip(native(probes[id(devices)], name, settings, t, target, programmed, z),
                             reference(cls, settings, t, target, programmed, z), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} at t = {t}")


def step_model(devices: dict, name: str, step: str, inputs: dict[str, np.ndarray], settings: dict) -> onnx.ModelProto:
    """One call of a traced step function (and DeviceIndex) for the device model ``name`` of ``devices``."""
    config = DeviceConfig(**{k: v for k, v in settings.items() if k in CONFIG_KEYS})
    attributes = {key: float(getattr(config, key)) for key in DEVICE_PARAMETERS}
    nodes = [h.make_node("DeviceIndex", [], ["index"], domain=DOMAIN, device=name),
             h.make_node(step, [*inputs, "index"], ["y"], domain=DOMAIN, **attributes)]
    graph = h.make_graph(nodes, step, [h.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
                                       for k, v in inputs.items()],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    functions = device_functions(DOMAIN, devices)
    for function in functions:
        function.opset_import[0].version = 17
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(DOMAIN, OPSET_VERSION)],
                        functions=functions)


@pytest.mark.parametrize(("devices", "name"), CASES)
def test_traced_function_bodies_compute_the_device_classes_numbers(devices, name, rng):
    cls, settings = devices[name], SETTINGS[name]
    target, programmed, z = states(settings.get("g_max", 25.0), rng)
    one = np.array(1.0, F32)
    for t in TIMES:
        time = np.array(t, F32)
        steps = {"DeviceProgrammingSigma": {"G_target": target, "noise_scale": one},
                 "DeviceDrift": {"G_target": target, "G_prog": programmed, "z": z, "t_inference": time,
                                 "noise_scale": one},
                 "DeviceReadSigma": {"G_prog": programmed, "G_now": target, "t_inference": time, "noise_scale": one}}
        for (step, inputs), want in zip(steps.items(), reference(cls, settings, t, target, programmed, z),
                                        strict=True):
            session = ort.InferenceSession(step_model(devices, name, step, inputs, settings).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            got = session.run(None, inputs)[0]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {step} at t = {t}")


def test_an_unknown_device_name_gives_nan_in_the_function_body():
    inputs = {"G_target": np.ones(3, F32), "noise_scale": np.array(1.0, F32)}
    model = step_model(DEVICE_CLASSES, "flash", "DeviceProgrammingSigma", inputs, {})
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert np.isnan(got).all()


def test_a_fourth_fit_is_interpolated_in_ln_t_and_held_after_the_last(rng):
    model = edited.ReRAMDevice(g_max=40.0)
    target = np.linspace(0, 40, 9, dtype=F32)
    polys = [np.polynomial.polynomial.polyval(target / 40.0, fit.coefficients) for fit in model.fits]
    times = [fit.t for fit in model.fits]
    for t in (1.0, 600.0, 1.5 * DAY, 4 * DAY, 7 * DAY, 60 * DAY):
        clamped = min(max(t, times[0]), times[-1])
        want = [np.interp(np.log(clamped), np.log(times), [p[i] for p in polys]) for i in range(target.size)]
        np.testing.assert_allclose(model.sigma_at(target, t), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(model.sigma_at(torch.from_numpy(target), t).numpy(), model.sigma_at(target, t),
                                   rtol=1e-6, atol=1e-6)
