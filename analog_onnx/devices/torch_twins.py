"""The trainer's side of the device physics: torch draws for ``chip.py``, and hardware-aware training.

``chip.program_layer`` and ``chip.read_weights`` run unchanged on torch tensors; this module only
supplies the draws: ``torch.randn``/``torch.rand`` (same distributions as the reference's streams,
not the same numbers) or the reference's own numbers (``draws_from_numpy``) when a test or an
export must match it exactly.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.conductance import mapping_scale, to_conductances, to_weights
from analog_onnx.devices.streams import ChipDraws


def torch_chip_draws(shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> ChipDraws:
    """Fresh per-chip draws for a layer with weights of ``shape`` (pair arrays ``(2, *shape)``)."""
    pair_shape = (2, *shape)
    return ChipDraws(program=torch.randn(pair_shape, generator=generator, device=device),
                     drift=torch.randn(pair_shape, generator=generator, device=device),
                     stuck=torch.rand(pair_shape, generator=generator, device=device),
                     reference_read=torch.randn(pair_shape, generator=generator, device=device))


def draws_from_numpy(draws: ChipDraws, device: torch.device | str | None = None) -> ChipDraws:
    """The reference's draws as tensors: the torch twin then computes the reference's numbers."""
    return ChipDraws(**{f.name: torch.as_tensor(getattr(draws, f.name), device=device) for f in fields(draws)})


def hwa_weights(weight: torch.Tensor, device: DeviceModel, *, channel_axis: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``weight`` with one fresh draw of the device's programming error, for one training batch.

    Hardware-aware training as aihwkit's weight modifiers do it: the forward pass sees the weights
    as a freshly programmed chip would hold them (mapped to conductance pairs, programmed, mapped
    back); the backward pass is straight-through (the perturbation is a constant), so the update
    goes to the clean weights.
    """
    with torch.no_grad():
        clean = weight.detach().float()
        scale = mapping_scale(clean, device.g_max, channel_axis)
        g_target = to_conductances(clean, scale, device.g_max)
        z = torch.randn(g_target.shape, generator=generator, device=clean.device)
        perturbation = to_weights(device.program(g_target, z), scale) - clean
    return weight + perturbation.to(weight.dtype)
