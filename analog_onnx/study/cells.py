"""Running one cell: train a model, or evaluate a trained model on one hardware.

A cell is a folder; ``record.json`` in it is written last, atomically, and means "done". A rerun
skips a folder with a record whose key matches; a training's record also holds its model's sha256,
so a model damaged or replaced after training makes the cell run again. A training folder without a record but with a
``last.pt`` was interrupted and continues from its last epoch (the trainer's resume); any other
partial folder starts over. The functions here run in worker processes (or Ray tasks), so they
take and return plain data.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analog_onnx.files import write_text

RECORD = "record.json"
MODEL = "model.onnx"  # a training cell's exported model, which its evaluations read


@dataclass(frozen=True)
class Task:
    """What a worker needs to run one cell."""

    kind: str  # "train" or "evaluate"
    label: str  # for the progress display
    folder: str  # absolute
    key: str
    settings: dict[str, Any]
    model: str | None = None  # evaluate: the trained model.onnx
    data: str | None = None  # evaluate: the data spec
    threads: int = 1
    code: str = ""  # the hash of the code that computes the cell (study/code.py), kept in its record


def read_record(folder: str | Path, key: str, kind: str) -> dict[str, Any] | None:
    """The record of a ``kind`` cell ("train" or "evaluate") when it is done with these settings and
    holds what its readers use, else None: a damaged, edited or foreign record means the cell is
    run again, never a crash. A training is done only while its model file is the one it wrote."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or record.get("status") != "done":
        return None
    if kind == "train":
        digest = model_digest(folder)
        complete = digest is not None and record.get("model_sha256") == digest
    else:
        complete = _evaluation_complete(record)
    return record if complete else None


def model_digest(folder: str | Path) -> str | None:
    """The sha256 of the training's model in ``folder``, or None when it cannot be read."""
    try:
        with open(Path(folder) / MODEL, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


def _evaluation_complete(record: dict[str, Any]) -> bool:
    """What ``results`` reads: clean accuracy, midpoint and status, and each point's accuracies."""
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    points = record.get("points")
    return (number(record.get("clean_accuracy")) and isinstance(record.get("midpoint_status"), str)
            and (record.get("midpoint_noise") is None or number(record.get("midpoint_noise")))
            and isinstance(points, list) and bool(points)
            and all(isinstance(p, dict) and number(p.get("noise_scale")) and isinstance(p.get("accuracies"), list)
                    and bool(p["accuracies"]) and all(number(a) for a in p["accuracies"]) for p in points))


def write_json(path: Path, data: Any) -> None:
    """A cell's or the study's JSON file, replaced atomically (records are rewritten on resume)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n", force=True)


def run_task(task: Task) -> dict[str, Any]:
    """Run one cell and write its record; returns the record."""
    started = time.perf_counter()
    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = _train(task, folder) if task.kind == "train" else _evaluate(task, folder)
    record = {"key": task.key, "status": "done", "kind": task.kind, "settings": task.settings, "code": task.code,
              "seconds": time.perf_counter() - started, **result}
    write_json(folder / RECORD, record)
    return record


def _train(task: Task, folder: Path) -> dict[str, Any]:
    import torch

    from analog_onnx.train.trainer import TrainConfig, train

    torch.set_num_threads(task.threads)
    config = TrainConfig(**task.settings, out=str(folder))
    resume = (folder / "last.pt").is_file()
    result = train(config, resume=resume, force=not resume, progress=False, verbose=False)
    return {"resumed": resume, "best": result.best, "last": result.history[-1],
            "model": str(Path(result.model_path).relative_to(folder)) if result.model_path else None,
            "model_sha256": model_digest(folder)}


def _evaluate(task: Task, folder: Path) -> dict[str, Any]:
    from analog_onnx.config import AnalogConfig
    from analog_onnx.evaluate import RunSettings, evaluate

    s = task.settings
    settings = RunSettings(repeats=s["repeats"], seed=s["seed"], batch_size=s["batch_size"], top_k=None,
                           threads=task.threads)
    assert task.model is not None and task.data is not None
    report = evaluate(task.model, task.data, config=AnalogConfig.from_dict(s["hardware"]),
                      noise_scales=s["noise_scales"], settings=settings, limit=s["limit"])
    model = report.models[0]
    return {"chance_accuracy": report.chance_accuracy, "clean_accuracy": model.clean_accuracy,
            "midpoint_noise": model.midpoint.noise, "midpoint_status": model.midpoint.status,
            "points": [{"noise_scale": p.noise_scale, "accuracies": list(p.accuracies)} for p in model.points],
            "notes": list(report.notes)}
