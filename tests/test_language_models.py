"""Language models (issue 18): token data and perplexity in evaluate, training twins for token
models, and no weight layer left digital without a word (tied lm_head, Gemm transB, inspect,
keep-last-digital as the output layer, include/exclude on the exporter's module paths)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import digits_mlp, one_line_error
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import load_preset
from analog_onnx.data import load_dataset
from analog_onnx.data.text import split_of
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import evaluate
from analog_onnx.evaluate.runner import RunSettings
from analog_onnx.passes.sites import NAME_SCOPES_KEY
from analog_onnx.runtime import make_session
from analog_onnx.transform import analog_sites, digital_layers, transform_model

VOCAB, WIDTH = 11, 6
EXACT = load_preset("aihwkit-lightning").with_overrides(["inp_bits=0"])  # exact tiles at noise scale 0


def tied_lm(*, window: int | str = "T", mask: bool = False, scopes: bool = False, context: int | None = None,
            rng_seed: int = 0) -> onnx.ModelProto:
    """ids [N, T] -> Gather(wte) -> Gemm-free MatMul(W1) -> Tanh -> logits = MatMul(h, Transpose(wte)):
    the output layer tied to the embedding, as a dynamo export writes GPT-2's and Llama's."""
    rng = np.random.default_rng(rng_seed)
    wte = rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)
    w1 = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    inputs = [h.make_tensor_value_info("ids", TensorProto.INT64, ["N", window])]
    nodes = [h.make_node("Gather", ["wte", "ids"], ["e"], name="node_embedding"),
             h.make_node("MatMul", ["e", "w1"], ["m0" if mask else "m"], name="node_MatMul_1")]
    if mask:  # the mask zeroes padded positions' hidden states
        inputs.append(h.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", window]))
        nodes += [h.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
                  h.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]), h.make_node("Mul", ["m0", "mask3"], ["m"])]
    nodes += [h.make_node("Tanh", ["m"], ["t"], name="node_tanh"),
              h.make_node("Transpose", ["wte"], ["wte_t"], perm=[1, 0], name="node_transpose"),
              h.make_node("MatMul", ["t", "wte_t"], ["logits"], name="node_MatMul_7")]
    if scopes:
        for node, scope in ((nodes[1], "['', 'blocks.0.mlp.fc', 'linear']"),
                            (nodes[-1], "['', 'lm_head', 'linear_1']")):
            node.metadata_props.add(key=NAME_SCOPES_KEY, value=scope)
    graph = h.make_graph(nodes, "tied", inputs, [h.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                          ["N", window, VOCAB])],
                         [numpy_helper.from_array(wte, "wte"), numpy_helper.from_array(w1, "w1"),
                          numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    if context is not None:
        model.metadata_props.add(key="analog_onnx.tokens", value=json.dumps({"vocab_size": VOCAB, "context": context}))
    return model


def reference_logits(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    return make_session(model, native=False).run(None, {"ids": ids})[0]


# -- found item 6: nothing silently digital ------------------------------------------------------------

def test_tied_lm_head_is_an_analog_layer_and_computes_the_same():
    model = tied_lm()
    sites = {s.name: s for s in analog_sites(model, EXACT)}
    assert set(sites) == {"node_MatMul_1", "node_MatMul_7"}
    wte = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(sites["node_MatMul_7"].weight, wte.T)  # the weight as the MatMul reads it
    ids = np.random.default_rng(1).integers(0, VOCAB, (3, 5))
    analog = transform_model(model, EXACT)
    assert sum(n.op_type == "AnalogTile" for n in analog.graph.node) == 2
    clean = reference_logits(model, ids)
    for native in (False, None):  # the function bodies, and the native kernels where built
        got = make_session(analog, native=native).run(["logits"], {"ids": ids, "noise_scale": np.array(0, np.float32),
                                                                    "seed": np.array(0, np.int64)})[0]
        np.testing.assert_allclose(got, clean, rtol=1e-4, atol=1e-4)


def test_gemm_with_trans_b_is_an_analog_layer():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)  # [outputs, inputs], read transposed
    graph = h.make_graph([h.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                         [numpy_helper.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert [s.name for s in analog_sites(model, EXACT)] == ["fc"]
    x = rng.standard_normal((5, 3)).astype(np.float32)
    got = make_session(transform_model(model, EXACT), native=False).run(
        ["y"], {"x": x, "noise_scale": np.array(0, np.float32), "seed": np.array(0, np.int64)})[0]
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)


def test_inspect_lists_every_weight_bearing_node_left_digital_with_its_reason(run_cli, tmp_path):
    path = tmp_path / "tied.onnx"
    onnx.save_model(tied_lm(), path)
    code, out, err = run_cli("inspect", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert [layer["name"] for layer in info["analog_layers"]] == ["node_MatMul_1", "node_MatMul_7"]
    assert [(d["name"], d["op_type"]) for d in info["digital"]] == [("node_embedding", "Gather")]
    assert "embedding lookup" in info["digital"][0]["reason"]
    kept = digital_layers(tied_lm(), EXACT.with_placement(keep_last_digital=True, exclude=["MatMul_1"]))
    reasons = {d.name: d.reason for d in kept}
    assert "output layer" in reasons["node_MatMul_7"] and "exclude pattern 'MatMul_1'" in reasons["node_MatMul_1"]


def test_inspect_names_attention_products_and_transA_as_digital():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "w")
    nodes = [h.make_node("MatMul", ["x", "x2"], ["s"], name="scores"),
             h.make_node("Gemm", ["w", "s"], ["y"], transA=1, name="gemm_ta")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, TensorProto.FLOAT, [3, 3]) for n in ("x", "x2")],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])], [w])
    reasons = {d.name: d.reason for d in digital_layers(h.make_model(graph), EXACT)}
    assert "two activations" in reasons["scores"] and "transA" in reasons["gemm_ta"]


def test_keep_last_digital_keeps_the_output_layer_not_the_last_in_graph_order():
    model = tied_lm()
    rng = np.random.default_rng(2)
    # a layer written after lm_head that feeds a second output (as a dynamo export's present key/values)
    model.graph.node.append(h.make_node("MatMul", ["t", "w_side"], ["side"], name="side_proj"))
    model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((WIDTH, 2)).astype(np.float32),
                                                           "w_side"))
    model.graph.output.append(h.make_tensor_value_info("side", TensorProto.FLOAT, ["N", "T", 2]))
    names = [s.name for s in analog_sites(model, EXACT.with_placement(keep_last_digital=True))]
    assert names == ["node_MatMul_1", "side_proj"]


def test_include_and_exclude_match_the_module_path_the_exporter_recorded():
    model = tied_lm(scopes=True)
    assert [s.name for s in analog_sites(model, EXACT.with_placement(include=["^lm_head$"]))] == ["node_MatMul_7"]
    assert [s.name for s in analog_sites(model, EXACT.with_placement(exclude=[r"mlp\."]))] == ["node_MatMul_7"]
    analog = transform_model(model, EXACT.with_placement(include=["lm_head"]))
    assert sum(n.op_type == "AnalogTile" for n in analog.graph.node) == 1
    with pytest.raises(AnalogError, match="matches none"):
        transform_model(model, EXACT.with_placement(include=["attn"]))


# -- found item 1: token data and perplexity in evaluate ---------------------------------------------------

def write_tokens(path: Path, ids: np.ndarray, **arrays: np.ndarray) -> Path:
    np.savez(path, input_ids=ids, **arrays)
    return path


def perplexity_by_hand(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(perplexity, top-1) over the positions with a target >= 0."""
    scored = targets >= 0
    flat, labels = logits[scored].astype(np.float64), targets[scored]
    logsumexp = np.log(np.exp(flat - flat.max(axis=1, keepdims=True)).sum(axis=1)) + flat.max(axis=1)
    nll = logsumexp - flat[np.arange(len(labels)), labels]
    return math.exp(nll.mean()), float((flat.argmax(axis=1) == labels).mean())


def test_evaluate_int64_token_model_reports_perplexity_and_per_token_top1(tmp_path):
    model = tied_lm()
    ids = np.random.default_rng(3).integers(0, VOCAB, (6, 7))
    data = write_tokens(tmp_path / "windows.npz", ids)
    report = evaluate(model, f"tokens:{data}", config=EXACT, noise_scales=[0.0],
                      settings=RunSettings(repeats=1, seed=0, batch_size=4, top_k=None))
    targets = np.full(ids.shape, -1)
    targets[:, :-1] = ids[:, 1:]  # the next token; the last position has none
    expected_ppl, expected_top1 = perplexity_by_hand(reference_logits(model, ids), targets)
    result = report.models[0].to_dict()
    assert report.data["task"] == "next_token" and report.data["scored"] == 6 * 6
    assert report.chance_accuracy == pytest.approx(1 / VOCAB)  # from the model's vocabulary
    assert result["clean_perplexity"] == pytest.approx(expected_ppl, rel=1e-6)
    assert result["clean_accuracy"] == pytest.approx(expected_top1)
    assert result["points"][0]["perplexity_mean"] == pytest.approx(expected_ppl, rel=1e-4)


def test_evaluate_feeds_the_attention_mask_and_never_scores_padding(tmp_path):
    model = tied_lm(mask=True)
    ids = np.random.default_rng(4).integers(0, VOCAB, (4, 6))
    mask = np.ones_like(ids)
    mask[:, 4:] = 0  # two padded positions per window
    data = write_tokens(tmp_path / "masked.npz", ids, attention_mask=mask)
    report = evaluate(model, f"tokens:{data}", config=EXACT, noise_scales=[0.0],
                      settings=RunSettings(repeats=1, seed=0, top_k=None))
    logits = make_session(model, native=False).run(None, {"ids": ids, "attention_mask": mask})[0]
    targets = np.full(ids.shape, -1)
    targets[:, :-1] = ids[:, 1:]
    targets[mask == 0] = -1
    assert report.data["scored"] == 4 * 4
    assert report.models[0].to_dict()["clean_perplexity"] == pytest.approx(perplexity_by_hand(logits, targets)[0],
                                                                          rel=1e-6)


def test_evaluate_sequence_classification_from_token_windows(tmp_path):
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((WIDTH, 3)).astype(np.float32), "w")
    wte = numpy_helper.from_array(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32), "wte")
    nodes = [h.make_node("Gather", ["wte", "ids"], ["e"]),
             h.make_node("ReduceMean", ["e"], ["p"], axes=[1], keepdims=0),
             h.make_node("MatMul", ["p", "w"], ["logits"], name="classifier")]
    graph = h.make_graph(nodes, "cls", [h.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                         [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [wte, w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    ids = rng.integers(0, VOCAB, (9, 5))
    labels = rng.integers(0, 3, 9)
    data = write_tokens(tmp_path / "cls.npz", ids, labels=labels)
    report = evaluate(model, f"tokens:{data}", config=EXACT, noise_scales=[0.0],
                      settings=RunSettings(repeats=1, seed=0, top_k=None))
    logits = make_session(model, native=False).run(None, {"ids": ids})[0]
    assert report.data["task"] == "sequence_classification" and report.chance_accuracy == pytest.approx(1 / 3)
    assert report.models[0].clean_accuracy == pytest.approx(float((logits.argmax(1) == labels).mean()))


def test_text_reader_splits_by_file_and_cuts_next_token_windows(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n" * 3)
    (corpus / "__pycache__").mkdir()
    (corpus / "__pycache__" / "m0.cpython.pyc").write_bytes(b"\0binary")  # skipped, not an error
    splits = {s: load_dataset(f"text:{corpus}#window=8", s) for s in ("train", "validation", "test")}
    for d in splits.values():
        assert d.x.dtype == np.int64 and d.x.shape[1] == 8 and d.num_classes == 256
        np.testing.assert_array_equal(d.x[:, 1:], d.y[:, :-1])  # targets are the inputs shifted by one
    for split, d in splits.items():  # each split reads its own files, whole, and drops only a short tail
        size = sum(len(f.read_bytes()) for f in corpus.glob("*.py") if split_of(f.name) == split)
        assert size - 8 <= d.x.size + 1 <= size
    text = bytes(splits["train"].x[0].astype(np.uint8)).decode()
    assert text.startswith("def f")


@pytest.mark.parametrize("case, fragment", [
    ("empty", "holds no window"),
    ("binary", "binary file"),
    ("latin1", "not UTF-8"),
    ("nothing", "matches no files"),
    ("option", "unknown option"),
    ("twice", "option window given twice"),
    ("one_file_train", "test split only"),
])
def test_text_data_refuses_hostile_corpora_in_one_line(run_cli, tmp_path, case, fragment):
    model = tmp_path / "m.onnx"
    onnx.save_model(tied_lm(), model)
    target = tmp_path / "corpus.txt"
    target.write_bytes({"empty": b"", "binary": b"\x7fELF\0\0\x01", "latin1": b"caf\xe9 " * 50}.get(case, b"x" * 100))
    spec = {"nothing": f"text:{tmp_path}/*.nothing", "option": f"text:{target}#windows=3",
            "twice": f"text:{target}#window=3,window=4"}.get(case, f"text:{target}")
    split = "train" if case == "one_file_train" else "test"
    one_line_error(run_cli("evaluate", model, "--data", spec, "--split", split, "-p", "aihwkit-lightning"), fragment)


@pytest.mark.parametrize("case, fragment", [
    ("float_ids", "token ids must be integers"),
    ("no_ids", "needs an array input_ids"),
    ("bad_mask", "attention mask must be 0/1"),
    ("bad_labels", "fit neither"),
    ("out_of_vocab", "out of range"),
    ("object", "without pickle"),
    ("longer_than_context", "takes at most 4 (its context"),
    ("longer_than_input", "takes 5 (its input's fixed length"),
])
def test_tokens_data_refuses_hostile_files_in_one_line(run_cli, tmp_path, case, fragment):
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, 6))
    model = {"longer_than_context": tied_lm(context=4), "longer_than_input": tied_lm(window=5)}.get(case, tied_lm())
    model_path = tmp_path / "m.onnx"
    onnx.save_model(model, model_path)
    data = tmp_path / "d.npz"
    arrays = {"float_ids": {"input_ids": ids.astype(np.float32)}, "no_ids": {"x": ids},
              "bad_mask": {"input_ids": ids, "attention_mask": ids}, "bad_labels": {"input_ids": ids,
                                                                                     "labels": ids[:, :2]},
              "out_of_vocab": {"input_ids": ids, "vocab_size": np.array(3)}}.get(case, {"input_ids": ids})
    if case == "object":
        np.save(tmp_path / "d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        data = tmp_path / "d.npy"
    else:
        np.savez(data, **arrays)
    one_line_error(run_cli("evaluate", model_path, "--data", f"tokens:{data}", "-p", "aihwkit-lightning"), fragment)


def test_float_model_with_token_data_and_token_model_with_float_data_are_one_line_errors(run_cli, tmp_path):
    token_model = tmp_path / "lm.onnx"
    onnx.save_model(tied_lm(), token_model)
    one_line_error(run_cli("evaluate", token_model, "--data", "digits", "-p", "aihwkit-lightning"),
                   "float samples need a model that reads float images or signals")
    float_model = tmp_path / "mlp.onnx"
    onnx.save_model(digits_mlp(), float_model)
    data = write_tokens(tmp_path / "ids.npz", np.zeros((2, 64), np.int64))
    one_line_error(run_cli("evaluate", float_model, "--data", f"tokens:{data}", "-p", "aihwkit-lightning"),
                   "token data need a model that reads token ids")


# -- found item 2: training twins for token models -------------------------------------------------------

@pytest.mark.parametrize("method", ["nit", "hwa"])
def test_nit_and_hwa_train_a_small_gpt_on_text_and_export_int64_inputs(tmp_path, method):
    from analog_onnx.train.hardware import attach_hardware
    from analog_onnx.train.trainer import TrainConfig, train
    from analog_onnx.train.zoo import build_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"f{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * (3 + i % 4))
    hardware = load_preset("aihwkit-lightning")
    if method == "hwa":  # programming noise on the weights: the tile holding PCM devices
        hardware.device = load_preset("aihwkit-pcm").device
    twin = attach_hardware(build_model("gpt-micro", (16,), 256), hardware, (16,), tokens=True)
    assert [s.module for s in twin.sites][-1] == "lm_head"  # the tied output layer is simulated too
    result = train(TrainConfig(arch="gpt-micro", data=f"text:{corpus}#window=16", out=str(tmp_path / "run"),
                               method=method, epochs=1, batch_size=8, limit=64, eval_limit=16, optimizer="adam",
                               hardware=hardware.to_dict()), progress=False, verbose=False)
    exported = onnx.load(result.model_path)
    assert exported.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    props = {p.key: p.value for p in exported.metadata_props}
    assert json.loads(props["analog_onnx.tokens"]) == {"vocab_size": 256, "context": 16}
    assert "analog_onnx.preprocess" not in props  # token ids are not normalized
    assert result.history[0]["noisy_acc"] is not None
    report = evaluate(result.model_path, f"text:{corpus}#window=16", config=hardware, noise_scales=[0.0, 1.0],
                      settings=RunSettings(repeats=2, seed=0, top_k=None), limit=8)
    points = report.models[0].to_dict()["points"]
    assert all(1 < p["perplexity_mean"] < 256 * 4 for p in points)


def test_text_reader_uses_a_hugging_face_tokenizer_from_disk(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<unk>", "the", "fox", "dog", "jumps", "over", "."]
    vocabulary = {w: i for i, w in enumerate(words)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    corpus = tmp_path / "story.txt"
    corpus.write_text("the fox jumps over the dog . " * 5 + "the cat")
    data = load_dataset(f"text:{corpus}#window=4,tokenizer={tmp_path}", "test")
    assert data.num_classes == len(words)  # the tokenizer's vocabulary: chance and the label range
    np.testing.assert_array_equal(data.x[0], [1, 2, 4, 5])  # the fox jumps over
    assert data.y[0, -1] == 1 and data.x.max() < len(words)


def test_tokens_labels_of_minus_100_are_not_scored(tmp_path):
    ids = np.arange(12).reshape(2, 6) % VOCAB
    labels = np.full(ids.shape, -100)
    labels[:, :3] = ids[:, 1:4]  # Hugging Face marks unscored positions with -100
    data = load_dataset(f"tokens:{write_tokens(tmp_path / 'hf.npz', ids, labels=labels)}")
    assert data.scored == 6 and data.y.min() == -1 and data.num_classes == VOCAB


@pytest.mark.parametrize("arch, method, fragment", [("mlp", "baseline", "token data need gpt-micro"),
                                                    ("gpt-micro", "qat", "not available for token models")])
def test_train_refuses_token_data_with_a_sample_arch_or_qat_in_one_line(run_cli, tmp_path, arch, method, fragment):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.txt").write_text("some text to read " * 10)
    out = tmp_path / "run"
    one_line_error(run_cli("train", "--arch", arch, "--method", method, "--data", f"text:{corpus}#window=8",
                           "--out", out, "--no-progress"), fragment)
    assert not out.exists()  # refused before the run folder was made
