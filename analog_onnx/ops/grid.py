"""The integer grid of a uniform quantizer, shared by the op set and the devices' conductance levels."""

from __future__ import annotations


def levels(bits: int, signed: int) -> int:
    """Largest integer level: 2**(bits-1)-1 signed (symmetric), 2**bits-1 unsigned; 0 = no quantization."""
    if bits <= 0:
        return 0
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
