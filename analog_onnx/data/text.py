"""``text:PATH[#window=N,tokenizer=DIR]``: a local corpus cut into next-token windows.

PATH is a folder (every file under it, hidden ones and ``__pycache__`` skipped), a glob
(``~/src/**/*.py``) or one file. Files are split into train, validation and test BY FILE, from a
hash of each file's path relative to the corpus root, so no file's text is in two splits and the
split of a file never changes when files are added: about 10% test, 10% validation, 80% train.
One file is a test split only (evaluate on it as it is; training needs files to split).

Tokens are bytes (a vocabulary of 256 that needs no download) or, with ``tokenizer=DIR``, a
Hugging Face ``tokenizer.json`` in DIR read with the ``tokenizers`` package. The files of a split
are joined in path order and cut into non-overlapping windows of ``window`` + 1 tokens: a
sample's input is the first ``window`` tokens, its labels the ``window`` tokens after each.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from analog_onnx.data.dataset import Dataset, checked_token_dataset, max_data_bytes
from analog_onnx.errors import AnalogError

DEFAULT_WINDOW = 128
MAX_WINDOW = 1 << 16
BYTE_VOCABULARY = 256
SPLIT_BUCKETS = {"test": (0,), "validation": (1,)}  # of 10 hash buckets; the rest is train
OPTIONS = ("window", "tokenizer")


def parse_options(path: str | None, kind: str) -> tuple[str, dict[str, str]]:
    """``PATH#key=value,key=value`` -> (PATH, options), unknown keys refused."""
    if not path:
        raise AnalogError(f"data kind {kind} needs a path: --data {kind}:PATH")
    location, _, rest = path.partition("#")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS:
            known = ", ".join(f"{o}=..." for o in OPTIONS)
            raise AnalogError(f"{kind}: unknown option {item!r} after '#'; use {known}")
        if key in options:
            raise AnalogError(f"{kind}: option {key} given twice after '#'")
        options[key] = value
    return location, options


def window_option(options: dict[str, str], kind: str) -> int:
    raw = options.get("window", str(DEFAULT_WINDOW))
    try:
        window = int(raw)
    except ValueError:
        raise AnalogError(f"{kind}: window={raw!r} is not a whole number") from None
    if not 1 <= window <= MAX_WINDOW:
        raise AnalogError(f"{kind}: window must be between 1 and {MAX_WINDOW}, got {window}")
    return window


def corpus_files(location: str) -> tuple[Path, list[Path]]:
    """The corpus root and its files in path order: a file, a folder's files, or a glob's matches."""
    expanded = str(Path(location).expanduser())
    if glob.has_magic(expanded):
        root = Path(expanded.split("*")[0].split("?")[0].split("[")[0])
        root = root if root.is_dir() else root.parent
        files = [Path(f) for f in glob.glob(expanded, recursive=True)]
    elif Path(expanded).is_dir():
        root = Path(expanded)
        files = [f for f in root.rglob("*") if not any(part.startswith(".") or part == "__pycache__"
                                                       for part in f.relative_to(root).parts)]
    elif Path(expanded).is_file():
        return Path(expanded).parent, [Path(expanded)]
    else:
        raise AnalogError(f"text: {location} is not a file, a folder or a glob that matches files")
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise AnalogError(f"text: {location} matches no files")
    return root, files


def split_of(relative: str) -> str:
    """train, validation or test for a file, from a hash of its path (stable across runs and machines)."""
    bucket = hashlib.sha256(relative.encode()).digest()[0] % 10
    return next((split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets), "train")


def read_text_file(file: Path) -> str:
    data = file.read_bytes()
    if b"\0" in data:
        raise AnalogError(f"text: {file} is a binary file (it holds NUL bytes); give text files only")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AnalogError(f"text: {file} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def byte_tokens(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def hf_tokenizer(folder: str) -> tuple[Callable[[str], np.ndarray], int]:
    """A Hugging Face ``tokenizer.json`` on disk: its encode function and vocabulary size."""
    file = Path(folder).expanduser()
    file = file / "tokenizer.json" if file.is_dir() else file
    if not file.is_file():
        raise AnalogError(f"text: tokenizer={folder}: no tokenizer.json there")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise AnalogError("text: tokenizer= needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust library raises its own exception type for a bad file
        raise AnalogError(f"text: cannot read tokenizer {file}: {str(e).splitlines()[0] if str(e) else e}") from None

    def encode(text: str) -> np.ndarray:
        return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    return encode, tokenizer.get_vocab_size()


def read_text(path: str | None, split: str) -> Dataset:
    location, options = parse_options(path, "text")
    window = window_option(options, "text")
    encode, vocabulary = (hf_tokenizer(options["tokenizer"]) if "tokenizer" in options
                          else (byte_tokens, BYTE_VOCABULARY))
    root, files = corpus_files(location)
    single = Path(location).expanduser().is_file()
    if single and split != "test":
        raise AnalogError(f"text: {location} is one file, so it is a test split only; the {split} split needs "
                          "a folder or a glob of files to split by file")
    chosen = files if single else [f for f in files if split_of(f.relative_to(root).as_posix()) == split]
    if sum(f.stat().st_size for f in chosen) * 16 > max_data_bytes():  # int64 inputs and labels per byte
        raise AnalogError(f"text: the {split} split of {location} is too large to hold in memory "
                          f"(raise ANALOG_ONNX_MAX_DATA_BYTES or give fewer files)")
    tokens = [encode(read_text_file(f)) for f in chosen]
    stream = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
    count = (len(stream) - 1) // window if len(stream) > 1 else 0
    if count == 0:
        raise AnalogError(f"text: the {split} split of {location} ({len(chosen)} of {len(files)} files, "
                          f"{len(stream)} tokens) holds no window of {window} + 1 tokens")
    x = np.lib.stride_tricks.sliding_window_view(stream, window + 1)[::window][:count]
    return checked_token_dataset(np.ascontiguousarray(x[:, :-1]), np.ascontiguousarray(x[:, 1:]),
                                 f"text:{Path(location).name}", vocabulary)
