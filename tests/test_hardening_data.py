"""Readers allocate only what a file's header declares, within a limit, checked before reading;
non-finite inputs are refused and non-finite outputs are scored as wrong, and counted."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.data import Dataset, load_dataset
from analog_onnx.data.dataset import MAX_BYTES_ENV
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import RunSettings, evaluate
from analog_onnx.evaluate.engine import count_correct


def idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def write_mnist(folder: Path, images: bytes, labels: bytes, *, compressed: bool) -> None:
    for name, raw in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        if compressed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def test_an_idx_header_whose_size_overflows_int64_is_one_error(tmp_path):
    write_mnist(tmp_path, idx_header(0x08, (2**32 - 1,) * 3), idx_header(0x08, (3,)) + bytes(3), compressed=False)
    with pytest.raises(AnalogError, match="declares .* GiB of data, more than the limit"):
        load_dataset(f"mnist:{tmp_path}")


def test_a_gzip_idx_is_refused_before_it_is_decompressed_past_the_limit(tmp_path, monkeypatch):
    shape = (100, 28, 28)
    write_mnist(tmp_path, idx_header(0x08, shape) + bytes(100 * 28 * 28), idx_header(0x08, (100,)) + bytes(100),
                compressed=True)
    assert load_dataset(f"mnist:{tmp_path}").x.shape == (100, 1, 28, 28)
    monkeypatch.setenv(MAX_BYTES_ENV, "50000")
    with pytest.raises(AnalogError, match=f"set {MAX_BYTES_ENV} to allow more"):
        load_dataset(f"mnist:{tmp_path}")


def npz_with_header(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose x.npy header claims ``shape`` but holds only a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    y = io.BytesIO()
    np.save(y, np.zeros(3, np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
        archive.writestr("y.npy", y.getvalue())
    return path


def test_an_npz_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    path = npz_with_header(tmp_path / "big.npz", (10**12, 1))
    with pytest.raises(AnalogError, match=r"array x: declares 3.73e\+03 GiB"):
        load_dataset(f"npz:{path}")


def test_images_over_the_limit_or_pillows_bomb_warning_are_refused(tmp_path, monkeypatch):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((80, 80), np.uint8)).save(tmp_path / label / "0.png")
    assert load_dataset(f"imagefolder:{tmp_path}").x.shape == (2, 1, 80, 80)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 6400 pixels: Pillow only warns below 2x
    with pytest.raises(AnalogError, match="cannot read a/0.png"):
        load_dataset(f"imagefolder:{tmp_path}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setenv(MAX_BYTES_ENV, "10000")
    with pytest.raises(AnalogError, match="a/0.png: declares"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused(tmp_path, bad, run_cli):
    x = np.ones((4, 1, 8, 8), np.float32)
    x[2, 0, 3, 3] = bad
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    with pytest.raises(AnalogError, match="1 of 4 samples contain NaN or infinite values"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    with pytest.raises(AnalogError, match="contain NaN"):
        Dataset(x, np.arange(4), 4, "mine")
    model = Path(__file__).parents[1] / "models" / "digits-mlp-baseline.onnx"
    code, _, err = run_cli("evaluate", model, "-d", f"npz:{tmp_path / 'd.npz'}", "-p", "hardening-additive")
    assert code == 2 and "contain NaN" in err and len(err.strip().splitlines()) == 1


def test_samples_without_values_are_refused(tmp_path, run_cli):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 1, 0, 8), np.float32), y=np.arange(40) % 2)
    with pytest.raises(AnalogError, match=r"samples must have at least one value, got shape \[40, 1, 0, 8\]"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    write_mnist(tmp_path, idx_header(0x08, (4, 0, 28)), idx_header(0x08, (4,)) + bytes(4), compressed=False)
    with pytest.raises(AnalogError, match="^mnist: samples must have at least one value"):
        load_dataset(f"mnist:{tmp_path}")
    code, _, err = run_cli("train", "-d", f"npz:{tmp_path / 'd.npz'}", "-o", tmp_path / "m.onnx")
    assert code == 2 and "at least one value" in err and len(err.strip().splitlines()) == 1


def no_warnings_load(spec: str) -> None:
    """``load_dataset(spec)`` with every warning an error: a bad file must be one error line, nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(spec)


@pytest.mark.parametrize("labels, message", [
    (np.array([2**63 + 5, 1], np.uint64), "label 9223372036854775813 is too large"),
    (np.array([2**64 - 1, 1], np.uint64), "label 18446744073709551615 is too large"),
    (np.array([1e30, 1.0]), r"label 1e\+30 is too large"),
    (np.array([-3.0, 1.0]), "labels must be >= 0, found -3.0"),
    (np.array([2**31 - 1, 0], np.int32), "label 2147483647 is too large: a model here has at most 1048576 classes"),
])
def test_labels_are_checked_in_their_own_dtype(tmp_path, labels, message):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), np.float32), y=labels)
    with pytest.raises(AnalogError, match=f"^npz:d.npz: {message}"):
        no_warnings_load(f"npz:{tmp_path / 'd.npz'}")


def test_cifar_and_token_values_past_int64_are_reported_as_they_are(tmp_path):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([2**63 + 5, 1], np.uint64)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(AnalogError, match="label 9223372036854775813 is out of range for 10 classes"):
        no_warnings_load(f"cifar10:{tmp_path}")
    ids = np.array([[1, 2, 3], [2, 2, 3]], np.uint64)
    for arrays, message in (({"input_ids": np.array([[1, 2, 3], [2**63, 2, 3]], np.uint64)},
                             "token id 9223372036854775808 is too large"),
                            ({"input_ids": ids, "labels": np.array([2**64 - 1, 0], np.uint64)},
                             "class label 18446744073709551615 is too large"),
                            ({"input_ids": ids, "vocab_size": np.int64(2**40)},
                             "vocab_size must be one integer from 2")):
        np.savez(tmp_path / "t.npz", **arrays)
        with pytest.raises(AnalogError, match=message):
            no_warnings_load(f"tokens:{tmp_path / 't.npz'}")


def test_idx_values_past_float32_are_named_as_such(tmp_path):
    images = np.full((2, 2, 2), 1e300, ">f8")
    write_mnist(tmp_path, idx_header(0x0E, images.shape) + images.tobytes(), idx_header(0x08, (2,)) + bytes(2),
                compressed=False)
    with pytest.raises(AnalogError, match=r"^mnist: samples hold 1e\+300, beyond the float32 range"):
        no_warnings_load(f"mnist:{tmp_path}")


@pytest.mark.parametrize("kind", ["digits", "mnist1d"])
def test_a_path_for_a_kind_that_takes_none_is_refused(tmp_path, kind, run_cli):
    for spec in (f"{kind}:{tmp_path / 'missing'}", f"{kind}:"):
        with pytest.raises(AnalogError, match=f"^data kind {kind} takes no path, got '{kind}:"):
            load_dataset(spec)
    code, _, err = run_cli("train", "-d", f"{kind}:{tmp_path / 'missing'}", "-o", tmp_path / "m.onnx")
    assert code == 2 and "takes no path" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_cifar_reads_protocol_5_pickles_and_still_refuses_other_numpy_globals(tmp_path):
    images = (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3072)
    batch = {b"data": images, b"labels": np.array([7, 2])}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    data = load_dataset(f"cifar10:{tmp_path}")
    np.testing.assert_array_equal(data.x.reshape(2, -1), images / np.float32(255.0))
    assert data.y.tolist() == [7, 2]
    (tmp_path / "test_batch").write_bytes(b"cnumpy._core.numeric\nisclose\n.")  # GLOBAL, STOP
    with pytest.raises(AnalogError, match="not a plain data pickle .refusing to load numpy._core.numeric.isclose"):
        load_dataset(f"cifar10:{tmp_path}")


def write_pngs(root: Path, names: list[str]) -> None:
    from PIL import Image

    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), len(name), np.uint8)).save(root / name)


def load_error(spec: str, fifo: Path) -> str:
    """The error ``load_dataset(spec)`` raises; fails the test if the reader blocks opening ``fifo``
    (a writer is opened then, so the stuck reader sees the end of the pipe and finishes)."""
    errors: list[str] = []

    def load() -> None:
        try:
            load_dataset(spec)
            errors.append("no error")
        except AnalogError as e:
            errors.append(str(e))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail(f"{spec} blocked opening the FIFO {fifo.name}")
    return errors[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("spec, fifo, message", [
    ("imagefolder:f", "f/b/x.png", "^imagefolder: b/x.png is not a regular file"),
    ("npz:f/d.npz", "f/d.npz", "is not a file"),
    ("tokens:f/t.npy", "f/t.npy", "is not a file"),
    ("cifar10:f", "f/test_batch", "lacks test_batch"),
    ("mnist:f", "f/t10k-images-idx3-ubyte", "has no t10k-images-idx3-ubyte"),
    ("text:f/t.txt", "f/t.txt", "is not a file, a folder or a glob"),
])
def test_no_reader_opens_a_fifo(tmp_path, monkeypatch, spec, fifo, message):
    monkeypatch.chdir(tmp_path)
    write_pngs(tmp_path / "f", ["a/0.png", "b/0.png"])
    os.mkfifo(fifo)
    assert re.search(message, load_error(spec, tmp_path / fifo))


def test_imagefolder_reads_sub_folders_and_refuses_an_empty_class(tmp_path, run_cli):
    write_pngs(tmp_path, ["a/0.png", "a/deeper/1.png", "a/x.png/2.png", "b/0.png"])
    (tmp_path / "a" / "._0.png").write_bytes(b"macOS metadata, not an image")
    (tmp_path / "a" / "deeper" / "up").symlink_to(tmp_path / "a")  # a loop: each folder is read once
    (tmp_path / "b" / "link.png").symlink_to(tmp_path / "b" / "0.png")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.y.tolist() == [0, 0, 0, 1, 1] and data.num_classes == 2
    pixels = [round(float(v) * 255) for v in data.x[:, 0, 0, 0]]
    assert pixels == [7, 14, 13, 7, 7]  # each image holds the length of its name; link.png is b/0.png
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(AnalogError, match="^imagefolder: class folder c has no images"):
        load_dataset(f"imagefolder:{tmp_path}")
    code, _, err = run_cli("train", "-d", f"imagefolder:{tmp_path}", "-o", tmp_path / "m.onnx")
    assert code == 2 and "class folder c has no images" in err and len(err.strip().splitlines()) == 1


def test_nan_scores_are_wrong_in_top1_and_topk():
    labels = np.array([0, 1, 2, 3])
    scores = np.full((4, 10), np.nan, np.float32)
    scores[3] = np.arange(10)  # one finite row: label 3 is 7th best
    counts = count_correct(scores, labels, 7)
    assert (counts.top1, counts.topk, counts.nonfinite) == (0, 1, 3)


def nan_classifier() -> onnx.ModelProto:
    """A digits 'classifier' whose scores are all NaN: x @ w * NaN."""
    w = numpy_helper.from_array(np.ones((64, 10), np.float32), "w")
    nan = numpy_helper.from_array(np.array(np.nan, np.float32), "nan")
    nodes = [h.make_node("Flatten", ["x"], ["f"]), h.make_node("MatMul", ["f", "w"], ["s"], name="mm"),
             h.make_node("Mul", ["s", "nan"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [w, nan])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_all_nan_logits_score_zero_and_are_counted():
    report = evaluate(nan_classifier(), "digits", config="aihwkit-default", noise_scales=[0.5], limit=30,
                      settings=RunSettings(repeats=2, seed=0, top_k=5))
    point = report.models[0].points[0]
    assert report.models[0].clean_accuracy == 0.0
    assert point.accuracy.mean == 0.0 and point.topk.mean == 0.0
    assert point.nonfinite_outputs == 60 and report.to_dict()["points"][0]["nonfinite_outputs"] == 60


@pytest.mark.parametrize("kind", ["npz", "tokens"])
def test_an_unreadable_data_file_says_so(tmp_path, monkeypatch, kind):
    """zipfile.is_zipfile swallows the refusal: an unreadable archive was 'not a zip file'. (The
    refusal is simulated: the tests may run as root, who reads any file.)"""
    import builtins

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), input_ids=np.zeros((2, 4), np.int64))
    real_open = builtins.open

    def refusing(file, *args, **kwargs):
        if str(file) == str(data):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(AnalogError, match=f"cannot read {kind} file .*d.npz: Permission denied"):
        load_dataset(f"{kind}:{data}")
