"""Dataset readers on small files the tests write: layout, scaling, labels, splits, bad input."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from analog_onnx.data import load_dataset
from analog_onnx.errors import AnalogError


def test_digits_is_unchanged_by_the_new_readers():
    test, train = load_dataset("digits"), load_dataset("digits", "train")
    assert test.x.shape == (360, 1, 8, 8) and train.x.shape == (1437, 1, 8, 8)
    assert test.x.dtype == np.float32 and test.y.dtype == np.int64
    assert test.x.min() >= 0.0 and test.x.max() <= 1.0


def test_limit_keeps_the_first_samples_and_rejects_zero():
    full, first = load_dataset("digits"), load_dataset("digits", limit=10)
    np.testing.assert_array_equal(first.x, full.x[:10])
    with pytest.raises(AnalogError, match="^limit must be >= 1"):
        load_dataset("digits", limit=0)


def test_unknown_kind_and_split_are_one_clear_error():
    with pytest.raises(AnalogError, match="unknown data kind 'cifar11'"):
        load_dataset("cifar11:/x")
    with pytest.raises(AnalogError, match="unknown split 'val'"):
        load_dataset("digits", "val")


# -- npz ------------------------------------------------------------------------------------
def test_npz_reads_x_and_y_and_scales_uint8(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0]))
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_allclose(data.x, x / 255.0, rtol=1e-6)
    assert data.y.tolist() == [1, 0] and data.num_classes == 2


def test_npz_with_both_splits_picks_the_asked_one(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((3, 2), np.float32), y_train=[0, 1, 2],
             x_test=np.ones((2, 2), np.float32), y_test=[1, 1])
    assert len(load_dataset(f"npz:{tmp_path / 'd.npz'}", "train")) == 3
    assert load_dataset(f"npz:{tmp_path / 'd.npz'}", "test").x.min() == 1.0


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 3))}, "needs arrays x and y"),
    ({"x": np.zeros((2, 3)), "y": np.array([0, 1, 2])}, "one label per sample"),
    ({"x": np.zeros((2, 3)), "y": np.array([0.5, 1.0])}, "labels must be integers"),
    ({"x": np.zeros((2, 3)), "y": np.array([0, -1])}, "labels must be >= 0"),
    ({"x": np.array([["a", "b"], ["c", "d"]]), "y": np.array([0, 1])}, "must be numeric"),
])
def test_npz_bad_arrays_are_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(AnalogError, match=message):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_refuses_object_arrays_and_non_archives(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(AnalogError, match="without pickle"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AnalogError, match="not a readable"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(AnalogError, match="is not a file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(AnalogError, match="needs a path"):
        load_dataset("npz")


# -- CIFAR ----------------------------------------------------------------------------------
def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes = b"labels",
                      protocol: int = 2) -> None:
    batch = {b"batch_label": b"testing batch", b"data": images.reshape(len(images), -1), label_key: labels,
             b"filenames": [f"img{i}.png".encode() for i in range(len(images))]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_batch_gives_nchw_in_unit_range(tmp_path, protocol, rng):
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "test_batch", images, [3, 1, 4, 1], protocol=protocol)
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.x.shape == (4, 3, 32, 32) and data.num_classes == 10
    np.testing.assert_allclose(data.x, images / 255.0, rtol=1e-6)
    assert data.y.tolist() == [3, 1, 4, 1]


def test_cifar10_train_concatenates_five_batches(tmp_path, rng):
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", rng.integers(0, 256, (2, 3072), dtype=np.uint8), [i, 0])
    data = load_dataset(f"cifar10:{tmp_path}", "train")
    assert data.y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]


def test_cifar100_reads_fine_labels(tmp_path, rng):
    write_cifar_batch(tmp_path / "test", rng.integers(0, 256, (2, 3072), dtype=np.uint8), [99, 7],
                      label_key=b"fine_labels")
    data = load_dataset(f"cifar100:{tmp_path}")
    assert data.y.tolist() == [99, 7] and data.num_classes == 100


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}))
    with pytest.raises(AnalogError, match=r"not a plain data pickle .*refusing to load (posix|os|nt)\.system"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar_refuses_other_globals_and_codecs(tmp_path):
    class Builtin:
        def __reduce__(self):
            return (eval, ("1+1",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps(Builtin()))
    with pytest.raises(AnalogError, match="refusing to load builtins.eval"):
        load_dataset(f"cifar10:{tmp_path}")
    import _codecs

    class OtherCodec:
        def __reduce__(self):
            return (_codecs.encode, ("abc", "rot13"))

    (tmp_path / "test_batch").write_bytes(pickle.dumps(OtherCodec(), protocol=2))
    with pytest.raises(AnalogError, match="only latin-1"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar_wrong_contents_are_one_clear_error(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(AnalogError, match=r"uint8 \[N, 3072\]"):
        load_dataset(f"cifar10:{tmp_path}")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(AnalogError, match="test_batch"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(AnalogError, match="lacks data_batch_1"):
        load_dataset(f"cifar10:{tmp_path}", "train")


# -- MNIST IDX ------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_idx_plain_and_gzip(tmp_path, compressed, rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        raw = idx_bytes(array)
        if compressed:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (tmp_path / name).write_bytes(raw)
    data = load_dataset(f"mnist:{tmp_path}")
    assert data.x.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, rtol=1e-6)
    assert data.y.tolist() == labels.tolist() and data.num_classes == 10


def test_mnist_idx_dotted_names_and_float_images(tmp_path):
    images = np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4).astype(">f4")
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(idx_bytes(np.array([1, 0], np.uint8)))
    data = load_dataset(f"mnist:{tmp_path}", "train")
    np.testing.assert_allclose(data.x[:, 0], images, rtol=1e-6)


def test_mnist_idx_bad_files_are_one_clear_error(tmp_path):
    with pytest.raises(AnalogError, match="no t10k-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(AnalogError, match="header says"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(AnalogError, match="bad magic"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(AnalogError, match="cannot read t10k-images-idx3-ubyte.gz"):
        load_dataset(f"mnist:{tmp_path}")


# -- image folders --------------------------------------------------------------------------
def write_images(root: Path, classes: dict[str, list[np.ndarray]]) -> None:
    from PIL import Image

    for name, arrays in classes.items():
        (root / name).mkdir(parents=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / name / f"{i}.png")


def test_imagefolder_rgb_with_sorted_class_folders(tmp_path, rng):
    cat, dog = (rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(2))
    write_images(tmp_path, {"dog": [dog], "cat": [cat, cat]})
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.x.shape == (3, 3, 6, 5) and data.y.tolist() == [0, 0, 1] and data.num_classes == 2
    np.testing.assert_allclose(data.x[2], dog.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_imagefolder_mixing_gray_and_colour_gives_rgb(tmp_path, rng):
    gray, colour = rng.integers(0, 256, (4, 4), dtype=np.uint8), rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    write_images(tmp_path, {"a": [gray], "b": [colour]})
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.x.shape == (2, 3, 4, 4)
    for channel in range(3):
        np.testing.assert_allclose(data.x[0, channel], gray / 255.0, rtol=1e-6)


def test_imagefolder_grayscale_and_split_folders(tmp_path, rng):
    gray = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    write_images(tmp_path / "train", {"a": [gray], "b": [gray]})
    write_images(tmp_path / "test", {"a": [gray]})
    data = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert data.x.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(data.x[0, 0], gray / 255.0, rtol=1e-6)
    assert len(load_dataset(f"imagefolder:{tmp_path}", "test")) == 1


def test_imagefolder_bad_contents_are_one_clear_error(tmp_path, rng):
    with pytest.raises(AnalogError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}")
    write_images(tmp_path, {"a": [rng.integers(0, 256, (4, 4), dtype=np.uint8)],
                            "b": [rng.integers(0, 256, (5, 4), dtype=np.uint8)]})
    with pytest.raises(AnalogError, match="differ in size"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(AnalogError, match="cannot read b/0.png"):
        load_dataset(f"imagefolder:{tmp_path}")


# -- mnist1d --------------------------------------------------------------------------------
@pytest.mark.slow
def test_mnist1d_is_generated_once_then_cached(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path))
    state = np.random.get_state()
    first = load_dataset("mnist1d")
    assert first.x.shape == (1000, 1, 40) and first.num_classes == 10 and first.y.dtype == np.int64
    assert np.array_equal(np.random.get_state()[1], state[1]), "the generator must not change the global RNG"
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d-default-seed42.npz"]
    again = load_dataset("mnist1d")
    np.testing.assert_array_equal(first.x, again.x)
    assert len(load_dataset("mnist1d", "train")) == 4000
