"""Speed of the native analog kernels: per op, and end to end on a ResNet-20.

Prints, in one run:

1. CPU ns per element of each op through the native kernels (and the baseline library) and
   through the ONNX function bodies;
2. a ResNet-20 (CIFAR shape 3x32x32, random weights: timing needs no training) at batch 256
   with 2 intra-op threads: clean onnxruntime, then transformed with ``aihwkit-default``,
   ``aihwkit-pcm`` (one programmed chip read a day after programming: the chip is computed on
   the first run and kept, each run draws read noise) and ``hardening-additive`` (native
   kernels and function bodies), each as a ratio to clean
   onnxruntime; plus aihwkit's own simulation (``TorchInferenceRPUConfig``) when aihwkit is
   importable (it is never a dependency). A "pass-through" row runs the ``aihwkit-default``
   graph with every analog op reduced to its cheapest pass: the cost of the structure alone.
   The "no chain fusion" row runs ``hardening-additive`` natively without ``NoiseChain``: each
   Noise, BatchNormalization and ReLU a pass of its own; "no residual fusion" runs
   ``aihwkit-default`` with each residual Add and its ReLU a pass of their own. The "bound management off" row runs the
   native ``aihwkit-default`` with one round per vector: the difference is what the reruns of the
   vectors that saturate the ADC cost. The "no output noise" and "no draws" rows run the same
   graphs without their normals: clean plus what the normals cost is the floor of a preset;
3. a transformer MLP block (``--tokens`` x 768 -> 3072 -> 768 with GELU, random weights, the
   batch of sequences ``--sequences``): clean onnxruntime against the native ``aihwkit-default``
   tiles (the same tile on MatMul, activations [batch x tokens, features]) and their pass-through.

``--baseline LIBRARY`` adds every native row once more with another build of the kernel library
(say, of the previous commit: ``ANALOG_ONNX_CACHE=DIR analog-onnx kernels build`` with the old
sources on ``PYTHONPATH``), run in the same interleaved rounds on the same prepared graphs, so
that a change is measured before and after in one run. ``--no-function-bodies`` leaves out the
function-body rows (tens of times slower than the rest).

Variants run in interleaved rounds and each reports its fastest round, in wall time and in CPU
time of all threads (pool threads sleep instead of spinning), so that other load on the machine
distorts the ratios as little as possible. ``--profile`` adds onnxruntime's time
per op type for the native ``aihwkit-default`` and ``hardening-additive`` models (the latter with
and without chain fusion). ``--layers`` instead times each of ResNet-20's convolutions alone:
onnxruntime's Conv against ``AnalogTileConv`` pass-through and with ``aihwkit-default``'s
settings, in CPU ms and GFLOP/s.

    .venv/bin/python tools/bench_kernels.py [--batch 256] [--threads 2] [--rounds 5] [--profile | --layers]
        [--baseline LIBRARY] [--no-function-bodies] [--tokens 128] [--sequences 4]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos
from analog_onnx.ops.native.build import library_path
from analog_onnx.ops.schema import OPS, SCHEMAS, OpSchema
from analog_onnx.runtime import session_options
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


def bench_ops(batch: int, threads: int, rounds: int, baseline: str | None, function_bodies: bool) -> None:
    """CPU ns per element of each op natively (and with the baseline library when there is one)
    and through its function body, the columns in interleaved rounds."""
    shape = (batch, 16, 32, 32)  # the largest activation of a CIFAR ResNet-20
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    weight = (np.random.default_rng(1).standard_normal((16, shape[-1])) * 0.2).astype(np.float32)
    given = {"X": x, "Y": x, "W": weight, "S": np.ones((batch, 1), np.float32),
             "noise_scale": np.array(1.0, np.float32), "seed": np.array(1, np.int64), **CHIP}
    columns = {"native": (True, None)} | ({"baseline": (True, baseline)} if baseline else {}) \
        | ({"function bodies": (False, None)} if function_bodies else {})
    print(f"per op, tensor {shape}, {threads} threads: CPU ns per element (fastest of {rounds} interleaved rounds)")
    print(f"  {'op':30s} " + " ".join(f"{label:>15s}" for label in columns) + "   x native")
    for label, (op, attributes) in OP_CASES.items():
        feeds = {name: given[name] for name in op.inputs}
        model = op_model(op, attributes, feeds)
        sessions = {column: counted_session(model, threads, native, library)
                    for column, (native, library) in columns.items()}
        cpu = interleaved({column: lambda s=session, f=feeds: s.run(None, f) for column, session in sessions.items()},
                          rounds)[1]
        ratios = " ".join(f"{cpu[column] / cpu['native']:6.2f}" for column in columns if column != "native")
        times = " ".join(f"{cpu[column] / x.size * 1e9:15.2f}" for column in columns)
        print(f"  {label:30s} {times}   {ratios}")


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


def bench_layers(batch: int, threads: int, rounds: int, baseline: str | None) -> None:
    """CPU time of each ResNet-20 convolution: onnxruntime's Conv, and AnalogTileConv pass-through
    (no noise, DAC or ADC: the product alone) and with aihwkit-default's settings (each also with
    the baseline library when there is one)."""
    default = SCHEMAS["AnalogTile"].cases["aihwkit-default"]
    settings = {"pass-through": {**default, **PASS_THROUGH_FLOATS, **PASS_THROUGH_INTS}, "aihwkit-default": default}
    libraries = {"": None} | ({" [baseline]": baseline} if baseline else {})
    columns = {f"{label}{suffix}": (attributes, library) for label, attributes in settings.items()
               for suffix, library in libraries.items()}
    print(f"\nResNet-20 convolutions, batch {batch}, {threads} threads: CPU ms (fastest of {rounds}), "
          "GFLOP/s of CPU time, x Conv")
    print(f"  {'layer (cin>cout, size, kxk/stride) x count':44s} {'Conv':>14s} "
          + " ".join(f"{label:>22s}" for label in columns))
    totals = collections.Counter()
    for cin, cout, size, kernel, stride, count in RESNET20_CONVOLUTIONS:
        flops = 2.0 * batch * cout * cin * kernel * kernel * (size // stride) ** 2
        runs = {}
        for label, (attributes, library) in {"Conv": (None, None), **columns}.items():
            model, feeds = conv_model(cin, cout, size, kernel, stride, batch, attributes)
            session = counted_session(model, threads, attributes is not None, library)
            runs[label] = lambda s=session, f=feeds: s.run(None, f)
        cpu = interleaved(runs, rounds)[1]
        for label, seconds in cpu.items():
            totals[label] += seconds * count
        cells = [f"{cpu['Conv'] * 1e3:6.2f} {flops / cpu['Conv'] / 1e9:7.1f}"]
        cells += [f"{cpu[label] * 1e3:6.2f} {flops / cpu[label] / 1e9:7.1f} {cpu[label] / cpu['Conv']:6.2f}x"
                  for label in columns]
        print(f"  {f'{cin}>{cout}, {size}, {kernel}x{kernel}/{stride} x{count}':44s} " + " ".join(cells))
    print(f"  {'all convolutions of one forward pass (ms)':44s} {totals['Conv'] * 1e3:14.1f} "
          + " ".join(f"{totals[label] * 1e3:15.1f} {totals[label] / totals['Conv']:5.2f}x" for label in columns))


def resnet20() -> onnx.ModelProto:
    import torch

    from analog_onnx.train.export import to_onnx
    from analog_onnx.train.zoo import build_model

    torch.manual_seed(0)
    return to_onnx(build_model("resnet20", IMAGE, 10), IMAGE).model


def counted_session(model: onnx.ModelProto, threads: int, native: bool, library: str | None = None
                    ) -> ort.InferenceSession:
    """A session of exactly ``model`` with ``make_session``'s options (with the kernel ``library``
    instead of ours when given), except that idle pool threads sleep instead of spinning: CPU time
    then counts work only, a steadier measure than wall time on a shared machine."""
    options = session_options(threads, native=native and library is None)
    if library is not None:
        options.register_custom_ops_library(library)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_attributes(model: onnx.ModelProto, floats: dict[str, float], ints: dict[str, int]) -> onnx.ModelProto:
    """The same graph with these attributes of our ops set (where an op has them)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        for attribute in node.attribute if node.domain == DOMAIN else ():
            if attribute.name in floats:
                attribute.f = floats[attribute.name]
            elif attribute.name in ints:
                attribute.i = ints[attribute.name]
    return copy


def pass_through(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every analog op reduced to its cheapest pass (no noise, no DAC/ADC,
    no abs-max scaling): what the transformed structure costs before any noise or quantization."""
    return with_attributes(model, PASS_THROUGH_FLOATS, PASS_THROUGH_INTS)


def without_residual_fusion(model: onnx.ModelProto) -> onnx.ModelProto:
    """The native graph of ``model`` without native_graph's residual fusion: each residual Add and
    its ReLU a pass of their own."""
    with mock.patch.object(native_graph, "_fuse_residuals", lambda work: False):
        return native_graph.prepare(model)


def mlp_block(tokens: int, width: int = 768, hidden: int = 3072) -> onnx.ModelProto:
    """A transformer's MLP block on [sequences, tokens, width]: MatMul, bias, GELU (the erf form
    that exporters write at opset 17), MatMul, bias; random weights."""
    rng = np.random.default_rng(0)
    tensors = {"w1": rng.standard_normal((width, hidden)) / np.sqrt(width), "b1": rng.standard_normal(hidden) * 0.1,
               "w2": rng.standard_normal((hidden, width)) / np.sqrt(hidden), "b2": rng.standard_normal(width) * 0.1,
               "half": 0.5, "one": 1.0, "root2": np.sqrt(2.0)}
    initializers = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in tensors.items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Div", ["h1", "root2"], ["g0"]), helper.make_node("Erf", ["g0"], ["g1"]),
             helper.make_node("Add", ["g1", "one"], ["g2"]), helper.make_node("Mul", ["h1", "g2"], ["g3"]),
             helper.make_node("Mul", ["g3", "half"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["y0"]),
             helper.make_node("Add", ["y0", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, ["batch", tokens, width])],
                              [helper.make_tensor_value_info("y", 1, ["batch", tokens, width])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


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


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """The fastest wall and CPU seconds of each run over interleaved rounds (after a warm-up). Odd
    rounds run the list backwards, so that a variant and its baseline take both places next to each
    other: in one fixed order, the same library as its own baseline measured 2% to 4% slower in
    the first place."""
    wall = {label: float("inf") for label in runs}
    cpu = dict(wall)
    for run in runs.values():
        run()
    for round_ in range(rounds):
        for label, run in (runs.items() if round_ % 2 == 0 else reversed(runs.items())):
            if "function bodies" in label and round_ >= 2:
                continue  # tens of times slower: two rounds are enough
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[label] = min(wall[label], time.perf_counter() - start)
            cpu[label] = min(cpu[label], time.process_time() - start_cpu)
    return wall, cpu


def bench_network(title: str, variants: dict[str, tuple[onnx.ModelProto, bool]], feeds: dict[str, np.ndarray],
                  threads: int, rounds: int, baseline: str | None,
                  extra: dict[str, Callable[[], object]] | None = None) -> None:
    """Times the variants (model, native) against the first, clean one, in interleaved rounds;
    every native variant also with the ``baseline`` library when there is one."""
    runs = {}
    for label, (model, native) in variants.items():
        for suffix, library in {"": None, " [baseline]": baseline if native else None}.items():
            if suffix and library is None:
                continue
            session = counted_session(model, threads, native, library)
            # the controls have defaults, so onnxruntime lists them as overridable initializers, not inputs
            names = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
            given = {k: v for k, v in feeds.items() if k in names}
            runs[label + suffix] = lambda s=session, f=given: s.run(None, f)
    runs |= extra or {}
    wall, cpu = interleaved(runs, rounds)
    clean = next(iter(runs))
    print(f"\n{title}, {threads} intra-op threads (fastest of {rounds} interleaved rounds; CPU time of all "
          "threads beside wall time)")
    print(f"  {'variant':58s} {'wall ms':>8s} {'x clean':>8s} {'CPU ms':>8s} {'x clean':>8s}")
    for label in runs:
        print(f"  {label:58s} {wall[label] * 1e3:8.1f} {wall[label] / wall[clean]:8.2f} "
              f"{cpu[label] * 1e3:8.1f} {cpu[label] / cpu[clean]:8.2f}")


def bench_resnet(batch: int, threads: int, rounds: int, profile: bool, baseline: str | None,
                 function_bodies: bool) -> None:
    clean = resnet20()
    x = np.random.default_rng(0).random((batch, *IMAGE), dtype=np.float32)
    variants: dict[str, tuple[onnx.ModelProto, bool]] = {"clean onnxruntime": (clean, False)}

    def add_native(label: str, model: onnx.ModelProto) -> None:
        """``model`` as make_session runs it."""
        variants[label] = (native_graph.prepare(model), True)

    for preset in PRESETS:
        analog = transform_model(clean, load_preset(preset))
        add_native(f"{preset}, native", analog)
        if function_bodies:
            variants[f"{preset}, function bodies"] = (analog, False)
        if preset == "aihwkit-default":
            variants["aihwkit-default, native, no epilogue fusion"] = (analog, True)
            variants["aihwkit-default, native, no residual fusion"] = (without_residual_fusion(analog), True)
            add_native("aihwkit-default, pass-through kernels", pass_through(analog))
            add_native("aihwkit-default, native, bound management off", with_attributes(analog, {}, {"bm_rounds": 1}))
            add_native("aihwkit-default, native, no output noise", with_attributes(analog, {"out_noise": 0.0}, {}))
        if preset == "hardening-additive":  # prepare's other rewrites find nothing in this preset
            variants["hardening-additive, native, no chain fusion"] = (analog, True)
            variants["hardening-additive, native, no draws"] = (
                native_graph.prepare(with_attributes(analog, {"sigma_add": 0.0, "sigma_mul": 0.0}, {})), True)
    aihwkit = aihwkit_forward(batch, threads)
    extra = {"aihwkit TorchInferenceRPUConfig": aihwkit} if aihwkit is not None else {}
    feeds = {clean.graph.input[0].name: x, "seed": np.array(1, np.int64), **CHIP}
    bench_network(f"ResNet-20, batch {batch} of {'x'.join(map(str, IMAGE))}", variants, feeds, threads, rounds,
                  baseline, extra)
    if aihwkit is None:
        print("  (aihwkit not importable: its TorchInferenceRPUConfig row is left out)")
    if profile:
        for label in ("aihwkit-default, native", "hardening-additive, native",
                      "hardening-additive, native, no chain fusion"):
            print_profile(label, variants[label][0], {clean.graph.input[0].name: x, "seed": np.array(1, np.int64)},
                          threads)


def bench_transformer(tokens: int, sequences: int, threads: int, rounds: int, baseline: str | None) -> None:
    clean = mlp_block(tokens)
    analog = transform_model(clean, load_preset("aihwkit-default"))
    variants = {"clean onnxruntime": (clean, False),
                "aihwkit-default, native": (native_graph.prepare(analog), True),
                "aihwkit-default, pass-through kernels": (native_graph.prepare(pass_through(analog)), True)}
    x = np.random.default_rng(0).standard_normal((sequences, tokens, 768)).astype(np.float32)
    bench_network(f"Transformer MLP block, {sequences} x {tokens} tokens x 768 -> 3072 -> 768", variants,
                  {"x": x, "seed": np.array(1, np.int64)}, threads, rounds, baseline)


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
    parser.add_argument("--baseline", metavar="LIBRARY", help="also run the native rows with this kernel library")
    parser.add_argument("--no-function-bodies", action="store_true", help="leave out the function-body rows")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence of the transformer block")
    parser.add_argument("--sequences", type=int, default=4, help="sequences per batch of the transformer block")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}; kernels {library_path()}" + (f", baseline {args.baseline}"
                                                                        if args.baseline else ""))
    if args.layers:
        bench_layers(args.batch, args.threads, args.rounds, args.baseline)
        return
    bench_ops(args.batch, args.threads, args.rounds, args.baseline, not args.no_function_bodies)
    bench_resnet(args.batch, args.threads, args.rounds, args.profile, args.baseline, not args.no_function_bodies)
    bench_transformer(args.tokens, args.sequences, args.threads, args.rounds, args.baseline)


if __name__ == "__main__":
    main()
