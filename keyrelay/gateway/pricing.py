"""Tokens × price → integer micro-dollars, rounded up so nothing is ever under-charged."""

from __future__ import annotations

from keyrelay.protocols.canonical import Usage
from keyrelay.routing.table import Channel

_DENOMINATOR = 1_000_000 * 1_000_000  # per million tokens, and the ppm price multiplier


def cost_micros(channel: Channel, usage: Usage, multiplier_ppm: int) -> int:
    """Cost of a request in micro-dollars, rounded up.

    ceil((uncached input · input price + cache reads · cache-read price + cache writes · cache-write price
    + output · output price) · multiplier), prices in micro-dollars per million tokens and the multiplier in
    parts per million. Reasoning tokens are output tokens (``Usage.completion_tokens`` includes them).
    """
    raw = (
        usage.uncached_prompt_tokens * channel.input_micros_per_mtok
        + usage.cache_read_tokens * channel.cache_read_micros_per_mtok
        + usage.cache_write_tokens * channel.cache_write_micros_per_mtok
        + usage.completion_tokens * channel.output_micros_per_mtok
    )
    return -(-raw * multiplier_ppm // _DENOMINATOR)


def max_cost_micros(channel: Channel, prompt_tokens: int, completion_tokens: int, multiplier_ppm: int) -> int:
    """The most a request of at most these token counts can cost on ``channel`` (micro-dollars, rounded up).

    Every prompt token is priced at the dearest input price (plain, cache read or cache write: a cache
    write usually costs more than plain input), so the admission bound holds whatever the cache does.
    """
    dearest = max(
        channel.input_micros_per_mtok, channel.cache_read_micros_per_mtok, channel.cache_write_micros_per_mtok
    )
    raw = prompt_tokens * dearest + completion_tokens * channel.output_micros_per_mtok
    return -(-raw * multiplier_ppm // _DENOMINATOR)
