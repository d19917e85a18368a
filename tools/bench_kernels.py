"""Speed of the native analog kernels: per op, and end to end on a ResNet-20.

Prints, in one run:

1. ns per element of each op through the native kernels and through the ONNX function bodies;
2. a ResNet-20 (CIFAR shape 3x32x32, random weights: timing needs no training) at batch 256
   with 2 intra-op threads: clean onnxruntime, then transformed with ``aihwkit-default``,
   ``aihwkit-pcm`` (one programmed chip read a day after programming: the chip is computed on
   the first run and kept, each run draws read noise) and ``hardening-additive`` (native
   kernels and function bodies), each as a ratio to clean
   onnxruntime; plus aihwkit's own simulation (``TorchInferenceRPUConfig``) when aihwkit is
   importable (it is never a dependency). A "pass-through" row runs the ``aihwkit-default``
   graph with every analog op reduced to its cheapest pass: the cost of the structure alone.
   The "no chain fusion" row runs ``hardening-additive`` natively without ``NoiseChain``: each
   Noise, BatchNormalization and ReLU a pass of its own.

Variants run in interleaved rounds and each reports its fastest round, in wall time and in CPU
time of all threads (pool threads sleep instead of spinning), so that other load on the machine
distorts the ratios as little as possible. ``--profile`` adds onnxruntime's time
per op type for the native ``aihwkit-default`` and ``hardening-additive`` models (the latter with
and without chain fusion). ``--layers`` instead times each of ResNet-20's convolutions alone:
onnxruntime's Conv against ``AnalogTileConv`` pass-through and with ``aihwkit-default``'s
settings, in CPU ms and GFLOP/s.

    .venv/bin/python tools/bench_kernels.py [--batch 256] [--threads 2] [--rounds 5] [--profile | --layers]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos
from analog_onnx.ops.schema import OPS, SCHEMAS, OpSchema
from analog_onnx.runtime import make_session, session_options
from analog_onnx.transform import transform_model

IMAGE = (3, 32, 32)
PRESETS = ("aihwkit-default", "aihwkit-pcm", "hardening-additive")
CHIP = {"chip_seed": np.array(1, np.int64), "t_inference": np.array(86400.0, np.float32)}  # one chip, a day on
# an analog op's cheapest pass: no noise, no DAC/ADC, no abs-max scaling
PASS_THROUGH_FLOATS = {"out_noise": 0.0, "inp_bound": float("inf"), "out_bound": float("inf")}
PASS_THROUGH_INTS = {"inp_bits": 0, "out_bits": 0, "noise_management": 0}
# the configurations the presets emit, as the op schema names them
OP_CASES = {f"{op.name} ({label})": (op, op.cases[label]) for op in OPS for label in op.benchmarked}


def fastest(run: Callable[[], object], rounds: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The least time of ``rounds`` runs after a warm-up (allocations, thread pool start), on
    ``clock``: wall time, or ``time.process_time`` for the CPU time of all threads."""
    run()
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def op_model(op: OpSchema, attributes: dict, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    node = helper.make_node(op.name, list(feeds), list(op.outputs), domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], op.name, inputs, [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
                                                        for o in op.outputs])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets, functions=function_protos(17))


def bench_ops(batch: int, threads: int, rounds: int) -> None:
    shape = (batch, 16, 32, 32)  # the largest activation of a CIFAR ResNet-20
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    weight = (np.random.default_rng(1).standard_normal((16, shape[-1])) * 0.2).astype(np.float32)
    given = {"X": x, "Y": x, "W": weight, "S": np.ones((batch, 1), np.float32),
             "noise_scale": np.array(1.0, np.float32), "seed": np.array(1, np.int64), **CHIP}
    print(f"per op, tensor {shape}, {threads} threads: ns per element")
    print(f"  {'op':30s} {'native':>8s} {'function':>9s} {'speed-up':>9s}")
    for label, (op, attributes) in OP_CASES.items():
        feeds = {name: given[name] for name in op.inputs}
        model = op_model(op, attributes, feeds)
        times = {}
        for native in (True, False):
            session = make_session(model, threads=threads, native=native)
            times[native] = fastest(lambda s=session, f=feeds: s.run(None, f), rounds if native else 2) / x.size * 1e9
        print(f"  {label:30s} {times[True]:8.2f} {times[False]:9.2f} {times[False] / times[True]:8.1f}x")


# ResNet-20's convolutions (input channels, output channels, input size, kernel, stride) and how
# many of each one forward pass runs
RESNET20_CONVOLUTIONS = ((3, 16, 32, 3, 1, 1), (16, 16, 32, 3, 1, 6), (16, 32, 32, 3, 2, 1), (16, 32, 32, 1, 2, 1),
                         (32, 32, 16, 3, 1, 5), (32, 64, 16, 3, 2, 1), (32, 64, 16, 1, 2, 1), (64, 64, 8, 3, 1, 5))


def conv_model(cin: int, cout: int, size: int, kernel: int, stride: int, batch: int, attributes: dict | None
               ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One convolution: a standard Conv with bias (attributes None) or an AnalogTileConv with these
    tile attributes, on a random input; the model and its feeds."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, kernel, kernel)) * 0.2).astype(np.float32)
    geometry = {"pads": [kernel // 2] * 4, "strides": [stride] * 2}
    constants = [onnx.numpy_helper.from_array(w, "W")]
    if attributes is None:
        constants.append(onnx.numpy_helper.from_array(np.zeros(cout, np.float32), "B"))
        node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], **geometry)
    else:
        constants += [onnx.numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in
                      (("noise_scale", 1.0, np.float32), ("seed", 1, np.int64),
                       ("scale", [1.0] * cout, np.float32), ("shift", [0.0] * cout, np.float32))]
        node = helper.make_node("AnalogTileConv", ["X", "W", "noise_scale", "seed", "scale", "shift"], ["Y"],
                                domain=DOMAIN, **attributes, **geometry)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], constants)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets), {"X": x}


def bench_layers(batch: int, threads: int, rounds: int) -> None:
    """CPU time of each ResNet-20 convolution: onnxruntime's Conv, and AnalogTileConv pass-through
    (no noise, DAC or ADC: the product alone) and with aihwkit-default's settings."""
    default = SCHEMAS["AnalogTile"].cases["aihwkit-default"]
    settings = {"pass-through": {**default, **PASS_THROUGH_FLOATS, **PASS_THROUGH_INTS}, "aihwkit-default": default}
    print(f"\nResNet-20 convolutions, batch {batch}, {threads} threads: CPU ms (fastest of {rounds}), "
          "GFLOP/s of CPU time, x Conv")
    print(f"  {'layer (cin>cout, size, kxk/stride) x count':44s} {'Conv':>14s} "
          + " ".join(f"{label:>22s}" for label in settings))
    totals = collections.Counter()
    for cin, cout, size, kernel, stride, count in RESNET20_CONVOLUTIONS:
        flops = 2.0 * batch * cout * cin * kernel * kernel * (size // stride) ** 2
        cpu = {}
        for label, attributes in {"Conv": None, **settings}.items():
            model, feeds = conv_model(cin, cout, size, kernel, stride, batch, attributes)
            session = counted_session(model, threads, attributes is not None)
            cpu[label] = fastest(lambda s=session, f=feeds: s.run(None, f), rounds, time.process_time)
            totals[label] += cpu[label] * count
        cells = [f"{cpu['Conv'] * 1e3:6.2f} {flops / cpu['Conv'] / 1e9:7.1f}"]
        cells += [f"{cpu[label] * 1e3:6.2f} {flops / cpu[label] / 1e9:7.1f} {cpu[label] / cpu['Conv']:6.2f}x"
                  for label in settings]
        print(f"  {f'{cin}>{cout}, {size}, {kernel}x{kernel}/{stride} x{count}':44s} " + " ".join(cells))
    print(f"  {'all convolutions of one forward pass (ms)':44s} {totals['Conv'] * 1e3:14.1f} "
          + " ".join(f"{totals[label] * 1e3:15.1f} {totals[label] / totals['Conv']:5.2f}x" for label in settings))


def resnet20() -> onnx.ModelProto:
    import torch

    from analog_onnx.train.export import to_onnx
    from analog_onnx.train.zoo import build_model

    torch.manual_seed(0)
    return to_onnx(build_model("resnet20", IMAGE, 10), IMAGE).model


def counted_session(model: onnx.ModelProto, threads: int, native: bool) -> ort.InferenceSession:
    """A session of exactly ``model`` with ``make_session``'s options, except that idle pool threads
    sleep instead of spinning: CPU time then counts work only, a steadier measure than wall time on
    a shared machine."""
    options = session_options(threads, native=native)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def pass_through(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every analog op reduced to its cheapest pass (no noise, no DAC/ADC,
    no abs-max scaling): what the transformed structure costs before any noise or quantization."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        for attribute in node.attribute if node.domain == DOMAIN else ():
            if attribute.name in PASS_THROUGH_FLOATS:
                attribute.f = PASS_THROUGH_FLOATS[attribute.name]
            elif attribute.name in PASS_THROUGH_INTS:
                attribute.i = PASS_THROUGH_INTS[attribute.name]
    return copy


def aihwkit_forward(batch: int, threads: int) -> Callable[[], object] | None:
    """aihwkit's default inference simulation of the same network, or None without aihwkit."""
    try:
        from aihwkit.nn.conversion import convert_to_analog
        from aihwkit.simulator.configs import TorchInferenceRPUConfig
    except ImportError:
        return None
    import torch

    from analog_onnx.train.zoo import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = convert_to_analog(build_model("resnet20", IMAGE, 10), TorchInferenceRPUConfig()).eval()
    x = torch.rand(batch, *IMAGE)

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    return forward


def bench_resnet(batch: int, threads: int, rounds: int, profile: bool) -> None:
    clean = resnet20()
    x = np.random.default_rng(0).random((batch, *IMAGE), dtype=np.float32)
    name = clean.graph.input[0].name
    variants: dict[str, tuple[onnx.ModelProto, bool]] = {"clean onnxruntime": (clean, False)}
    for preset in PRESETS:
        analog = transform_model(clean, load_preset(preset))
        variants[f"{preset}, native"] = (native_graph.prepare(analog), True)  # as make_session runs it
        variants[f"{preset}, function bodies"] = (analog, False)
        if preset == "aihwkit-default":
            variants["aihwkit-default, native, no epilogue fusion"] = (analog, True)
            variants["aihwkit-default, pass-through kernels"] = (native_graph.prepare(pass_through(analog)), True)
        if preset == "hardening-additive":  # prepare's other rewrites find nothing in this preset
            variants["hardening-additive, native, no chain fusion"] = (analog, True)
    runs = {}
    for label, (model, native) in variants.items():
        session = counted_session(model, threads, native)
        # the controls have defaults, so onnxruntime lists them as overridable initializers, not inputs
        controls = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
        feeds = {name: x} | {k: v for k, v in {"seed": np.array(1, np.int64), **CHIP}.items() if k in controls}
        runs[label] = lambda s=session, f=feeds: s.run(None, f)
    aihwkit = aihwkit_forward(batch, threads)
    if aihwkit is not None:
        runs["aihwkit TorchInferenceRPUConfig"] = aihwkit
    wall = {label: float("inf") for label in runs}
    cpu = dict(wall)
    for run in runs.values():
        run()
    for round_ in range(rounds):
        for label, run in runs.items():
            if "function bodies" in label and round_ >= 2:
                continue  # tens of times slower: two rounds are enough
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[label] = min(wall[label], time.perf_counter() - start)
            cpu[label] = min(cpu[label], time.process_time() - start_cpu)
    base, base_cpu = wall["clean onnxruntime"], cpu["clean onnxruntime"]
    print(f"\nResNet-20, batch {batch} of {'x'.join(map(str, IMAGE))}, {threads} intra-op threads "
          f"(fastest of {rounds} interleaved rounds; CPU time of all threads beside wall time)")
    print(f"  {'variant':46s} {'wall ms':>8s} {'x clean':>8s} {'CPU ms':>8s} {'x clean':>8s}")
    for label in runs:
        print(f"  {label:46s} {wall[label] * 1e3:8.1f} {wall[label] / base:8.2f} "
              f"{cpu[label] * 1e3:8.1f} {cpu[label] / base_cpu:8.2f}")
    if aihwkit is None:
        print("  (aihwkit not importable: its TorchInferenceRPUConfig row is left out)")
    if profile:
        for label in ("aihwkit-default, native", "hardening-additive, native",
                      "hardening-additive, native, no chain fusion"):
            print_profile(label, variants[label][0], {name: x, "seed": np.array(1, np.int64)}, threads)


def print_profile(label: str, model: onnx.ModelProto, feeds: dict, threads: int) -> None:
    """onnxruntime's own time per op type, to show where the time of a transformed model goes."""
    with tempfile.TemporaryDirectory() as scratch:
        options = session_options(threads, native=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3 / 3  # 3 runs, in ms
    print(f"\n{label}: onnxruntime time per op type (ms per run)")
    for op, ms in sorted(per_op.items(), key=lambda item: -item[1]):
        print(f"  {op:24s} {ms:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also print time per op type")
    parser.add_argument("--layers", action="store_true", help="only time ResNet-20's convolutions one by one")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}")
    if args.layers:
        bench_layers(args.batch, args.threads, args.rounds)
        return
    bench_ops(args.batch, args.threads, args.rounds)
    bench_resnet(args.batch, args.threads, args.rounds, args.profile)


if __name__ == "__main__":
    main()
