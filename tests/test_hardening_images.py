"""Image folders in every mode a reader meets: values and channels kept, or one clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analog_onnx.data import load_dataset
from analog_onnx.errors import AnalogError


def folder(root: Path, images: dict[str, Image.Image], suffix: str = ".png") -> str:
    """One class folder per image, so each image is its own class; returns the data spec."""
    for name, image in images.items():
        (root / name).mkdir(parents=True)
        image.save(root / name / f"0{suffix}")
    return f"imagefolder:{root}"


def ramp(dtype: type, top: float) -> np.ndarray:
    return np.linspace(0, top, 48).reshape(6, 8).astype(dtype)


def test_sixteen_bit_grayscale_keeps_its_values_and_one_channel(tmp_path):
    pixels = ramp(np.uint16, 65535)
    data = load_dataset(folder(tmp_path, {"a": Image.fromarray(pixels)}))
    assert data.x.shape == (1, 1, 6, 8)
    np.testing.assert_allclose(data.x[0, 0], pixels / 65535, rtol=1e-6)
    assert len(np.unique(data.x)) == 48


def test_eight_and_sixteen_bit_images_share_one_scale(tmp_path):
    data = load_dataset(folder(tmp_path, {"a": Image.fromarray(ramp(np.uint8, 255)),
                                          "b": Image.fromarray(ramp(np.uint16, 65535))}))
    np.testing.assert_allclose(data.x[0], data.x[1], atol=1 / 255)


def test_a_float_tiff_keeps_its_values(tmp_path):
    pixels = ramp(np.float32, 7.5) - 2.0
    data = load_dataset(folder(tmp_path, {"a": Image.fromarray(pixels)}, ".tif"))
    assert data.x.shape == (1, 1, 6, 8)
    np.testing.assert_array_equal(data.x[0, 0], pixels)


def test_float_and_integer_images_do_not_mix(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp(np.float32, 1.0)).save(tmp_path / "a" / "0.tif")
    Image.fromarray(ramp(np.uint8, 255)).save(tmp_path / "a" / "1.png")
    with pytest.raises(AnalogError, match="0.tif holds floating-point pixels"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_palettes_read_as_their_colours_and_a_gray_palette_as_gray(tmp_path):
    colour = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    palette = Image.fromarray(colour).quantize(16)
    gray = Image.fromarray(ramp(np.uint8, 255)).convert("P")
    data = load_dataset(folder(tmp_path / "c", {"a": palette}))
    np.testing.assert_allclose(data.x[0], np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / 255, rtol=1e-6)
    data = load_dataset(folder(tmp_path / "g", {"a": gray}))
    assert data.x.shape == (1, 1, 6, 8)
    np.testing.assert_allclose(data.x[0, 0], ramp(np.uint8, 255) / 255, rtol=1e-6)


def test_an_animation_is_refused(tmp_path):
    frames = [Image.fromarray(np.full((6, 8), 40 * i, np.uint8)) for i in range(3)]
    (tmp_path / "a").mkdir()
    frames[0].save(tmp_path / "a" / "0.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(AnalogError, match="0.gif has 3 frames"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_alpha_is_dropped_when_opaque_and_refused_when_not(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    data = load_dataset(folder(tmp_path / "opaque", {"a": Image.fromarray(rgba, "RGBA"),
                                                     "b": Image.fromarray(rgba[..., [0, 3]], "LA")}))
    assert data.x.shape == (2, 3, 6, 8)
    np.testing.assert_allclose(data.x[0], rgba[..., :3].transpose(2, 0, 1) / 255, rtol=1e-6)
    rgba[0, 0, 3] = 0
    with pytest.raises(AnalogError, match="transparent pixels"):
        load_dataset(folder(tmp_path / "clear", {"a": Image.fromarray(rgba, "RGBA")}))


def test_cmyk_becomes_three_channels_and_one_bit_becomes_zero_and_one(tmp_path):
    cmyk = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)).convert("CMYK")
    assert load_dataset(folder(tmp_path / "c", {"a": cmyk}, ".jpg")).x.shape == (1, 3, 6, 8)
    bits = Image.fromarray(ramp(np.uint8, 255) > 127)
    data = load_dataset(folder(tmp_path / "b", {"a": bits}))
    assert sorted(np.unique(data.x)) == [0.0, 1.0]


def test_integer_pixels_beyond_sixteen_bits_are_refused(tmp_path):
    image = Image.fromarray(ramp(np.int32, 10**6))
    with pytest.raises(AnalogError, match="beyond 16 bits"):
        load_dataset(folder(tmp_path, {"a": image}, ".tif"))
