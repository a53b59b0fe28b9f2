"""Tokens × price → integer micro-dollars, rounded up so nothing is ever under-charged."""

from __future__ import annotations

from keyrelay.routing.table import Channel

_DENOMINATOR = 1_000_000 * 1_000_000  # per million tokens, and the ppm price multiplier


def cost_micros(channel: Channel, prompt_tokens: int, completion_tokens: int, multiplier_ppm: int) -> int:
    """Cost of a request in micro-dollars: ceil((p·in + c·out) · multiplier)."""
    raw = prompt_tokens * channel.input_micros_per_mtok + completion_tokens * channel.output_micros_per_mtok
    return -(-raw * multiplier_ppm // _DENOMINATOR)
