"""The Monte Carlo loop: batches through one ORT session per model variant, counting hits.

A *unit* of work is one (variant, noise level, repeat): one pass over the data with the noise
level fed through the ``noise_scale`` input and one seed per batch through the ``seed`` input.
A unit's result depends only on the unit, the data, the batch size and the run's seed, never on
which process or machine runs it, so every backend gives the same numbers.

Seeds: batch ``b`` of repeat ``r`` gets ``SeedSequence(seed, spawn_key=(r,))``'s ``b``-th word
(per-read draws, the ``seed`` input). Repeat ``r`` reads programmed chip ``c = r // reads``
(``reads`` consecutive repeats per chip): its ``chip_seed`` is the first word of
``SeedSequence(seed, spawn_key=(c, CHIP_KEY))``, the same for every batch (per-chip draws).
Neither depends on the noise level or the model: a sweep uses common random numbers, so the
difference between two levels (or two models) reflects the level, not a luckier draw.
``t_inference`` is fed as the variant's time since programming.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from analog_onnx.errors import ModelError
from analog_onnx.files import first_line
from analog_onnx.runtime import make_session

SEED_MASK = np.uint64((1 << 63) - 1)  # the seed inputs are int64 and must be >= 0 to be reproducible
CHIP_KEY = 1  # keeps chip seeds apart from the batch seeds of the same repeat


@dataclass(frozen=True)
class Variant:
    """One model the grid runs, in the form a worker process can receive."""

    model: bytes  # serialized ONNX
    input_name: str
    output_name: str
    inputs_index: int  # which of Payload.inputs this variant reads
    noise_scale_input: str | None  # None: a clean model, run once without noise controls
    seed_input: str | None
    chip_seed_input: str | None = None  # None: a model transformed before chips were an input
    t_inference_input: str | None = None
    t_inference: float = 0.0  # seconds since programming, fed to t_inference_input
    fixed_batch: int | None = None  # the batch size the model's input fixes; it then runs at that size
    mask_input: str | None = None  # a token model's attention-mask input, fed Payload.mask
    folder: str | None = None  # where the model's tensors in external data files lie (a big model's)


@dataclass(frozen=True)
class Payload:
    """Everything a worker needs, sent once per worker."""

    variants: tuple[Variant, ...]
    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray
    batch_size: int
    top_k: int | None
    seed: int
    threads: int | None
    reads: int = 1  # consecutive repeats that read one chip: repeat r is chip r // reads
    mask: np.ndarray | None = None  # token data: the attention mask [N, T] (1: a real token)


@dataclass(frozen=True, order=True)
class Unit:
    variant: int
    noise_index: int
    repeat: int
    noise_scale: float


@dataclass(frozen=True)
class Counts:
    """Correct predictions (top-1, and top-k when asked) of one unit, and their summed negative
    log-likelihood. A prediction is a sample's class, or a token position's next token."""

    top1: int
    topk: int | None
    nonfinite: int = 0  # predictions whose scores hold NaN or infinity: never counted as correct
    nll: float = 0.0  # sum over predictions of -log softmax(scores)[label], nats; inf with nonfinite scores

    def __add__(self, other: Counts) -> Counts:
        topk = None if self.topk is None else self.topk + (other.topk or 0)
        return Counts(self.top1 + other.top1, topk, self.nonfinite + other.nonfinite, self.nll + other.nll)


def batch_seeds(seed: int, repeat: int, batches: int) -> np.ndarray:
    """Non-negative int64 seeds for every batch of one repeat, derived from the run's seed."""
    words = np.random.SeedSequence(seed, spawn_key=(repeat,)).generate_state(batches, np.uint64)
    return (words & SEED_MASK).astype(np.int64)


def chip_seed(seed: int, repeat: int) -> np.ndarray:
    """The non-negative int64 ``chip_seed`` of one repeat (one programmed chip), as a scalar."""
    word = np.random.SeedSequence(seed, spawn_key=(repeat, CHIP_KEY)).generate_state(1, np.uint64)[0]
    return np.array(word & SEED_MASK, dtype=np.int64)


def count_correct(logits: np.ndarray, labels: np.ndarray, top_k: int | None) -> Counts:
    """Top-1 is argmax (first index on ties, as onnxruntime users compute it); a prediction is in
    the top k when fewer than k classes score strictly higher than its label (cheaper than a
    sort). A prediction with any NaN or infinite score is wrong (NaN compares false, so it would
    otherwise be in every top k) and is counted in ``nonfinite``.

    ``labels`` [N] scores one prediction per sample; [N, T] one per token position (``logits``
    [N, T, V]), where a negative label is not scored."""
    labels = labels.reshape(-1)
    scores = logits.reshape(len(labels), -1)
    if labels.min(initial=0) < 0:
        scored = labels >= 0
        scores, labels = scores[scored], labels[scored]
    finite = np.isfinite(scores).all(axis=1)
    nonfinite = len(labels) - int(np.count_nonzero(finite))
    top1 = int(np.count_nonzero((scores.argmax(axis=1) == labels) & finite))
    label_scores = scores[np.arange(len(labels)), labels]
    nll = _negative_log_likelihood(scores, label_scores) if nonfinite == 0 else float("inf")
    if top_k is None:
        return Counts(top1, None, nonfinite, nll)
    higher = (scores > label_scores[:, None]).sum(axis=1)
    return Counts(top1, int(np.count_nonzero((higher < top_k) & finite)), nonfinite, nll)


def _negative_log_likelihood(scores: np.ndarray, label_scores: np.ndarray) -> float:
    """Sum of logsumexp(row) - row[label], in float64 (stable: the row's max is taken out first)."""
    peak = scores.max(axis=1, keepdims=True).astype(np.float64)
    logsumexp = np.log(np.exp(scores - peak).sum(axis=1, dtype=np.float64)) + peak[:, 0]
    return float((logsumexp - label_scores.astype(np.float64)).sum())


def padded(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` with zero samples appended up to ``size`` (their results are dropped). Samples do
    not interact and each element's noise depends on its index only, so the real ones are unchanged."""
    if len(batch) >= size:
        return batch
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


class Evaluator:
    """Runs units; builds one session per distinct model on first use and keeps it: variants that
    differ only in what they feed (the times of a ``t_inference`` sweep) share it."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.sessions: dict[bytes, ort.InferenceSession] = {}  # by the serialized model

    def session(self, index: int) -> ort.InferenceSession:
        variant = self.payload.variants[index]
        if variant.model not in self.sessions:
            if variant.folder is not None:  # a big model's session: one such at a time (units come variant by variant)
                self.sessions.clear()
            self.sessions[variant.model] = make_session(variant.model, threads=self.payload.threads,
                                                        folder=variant.folder)
        return self.sessions[variant.model]

    def run(self, unit: Unit) -> Counts:
        p = self.payload
        variant = p.variants[unit.variant]
        session = self.session(unit.variant)
        x, labels, size = p.inputs[variant.inputs_index], p.labels, variant.fixed_batch or p.batch_size
        starts = range(0, len(labels), size)
        feed: dict[str, np.ndarray] = {}
        if variant.noise_scale_input is not None:
            feed[variant.noise_scale_input] = np.array(unit.noise_scale, dtype=np.float32)
        seeds = batch_seeds(p.seed, unit.repeat, len(starts)) if variant.seed_input is not None else None
        if variant.chip_seed_input is not None:
            feed[variant.chip_seed_input] = chip_seed(p.seed, unit.repeat // p.reads)
        if variant.t_inference_input is not None:
            feed[variant.t_inference_input] = np.array(variant.t_inference, dtype=np.float32)
        counts = Counts(0, 0 if p.top_k is not None else None)
        for b, start in enumerate(starts):
            batch = x[start:start + size]
            feed[variant.input_name] = padded(batch, size) if variant.fixed_batch else batch
            if variant.mask_input is not None:
                part = p.mask[start:start + size]
                feed[variant.mask_input] = padded(part, size) if variant.fixed_batch else part
            if seeds is not None:
                feed[variant.seed_input] = seeds[b:b + 1].reshape(())
            try:
                logits = session.run([variant.output_name], feed)[0]
            except Exception as error:  # onnxruntime's own types: a shape only some batches have, a kernel's refusal
                raise ModelError(f"onnxruntime failed on samples {start} to {start + len(batch) - 1}: "
                                 f"{first_line(error)}") from None
            rows = len(feed[variant.input_name])
            if logits.ndim == 0 or logits.shape[0] != rows:  # the one-sample probe cannot see this
                raise ModelError(f"first output {variant.output_name} has shape {list(logits.shape)} for a batch "
                                 f"of {rows} samples; evaluate needs one row of scores per sample")
            logits = logits.reshape(rows, -1)[:len(batch)]
            counts += count_correct(logits, labels[start:start + len(batch)], p.top_k)
        return counts
