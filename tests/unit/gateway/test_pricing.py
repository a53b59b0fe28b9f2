"""Cost in micro-dollars with prompt-cache prices: exact, rounded up, and bounded at admission."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keyrelay.gateway.pricing import cost_micros, max_cost_micros
from keyrelay.protocols.canonical import Usage
from keyrelay.routing.table import Channel


def channel(inp: int = 3_000_000, out: int = 15_000_000, read: int = 300_000, write: int = 3_750_000) -> Channel:
    return Channel(
        provider="anthropic",
        kind="anthropic",
        base_url="http://x",
        api_key=None,
        model="claude",
        upstream_model="claude",
        input_micros_per_mtok=inp,
        output_micros_per_mtok=out,
        region=None,
        timeout_s=1,
        connect_timeout_s=1,
        cache_read_micros_per_mtok=read,
        cache_write_micros_per_mtok=write,
    )


def test_cache_tokens_are_priced_at_their_own_prices_and_not_counted_twice() -> None:
    # 1,000 prompt tokens of which 600 read from the cache and 100 written to it; 200 output tokens.
    usage = Usage(1_000, 200, cache_read_tokens=600, cache_write_tokens=100)
    # 300 × $3 + 600 × $0.30 + 100 × $3.75 + 200 × $15, per million tokens
    expected = (300 * 3_000_000 + 600 * 300_000 + 100 * 3_750_000 + 200 * 15_000_000) // 1_000_000
    assert cost_micros(channel(), usage, 1_000_000) == expected == 4_455


def test_reasoning_tokens_are_output_tokens() -> None:
    assert cost_micros(channel(), Usage(0, 10, reasoning_tokens=8), 1_000_000) == 150


def test_rounds_up() -> None:
    assert cost_micros(channel(), Usage(1, 0), 1_000_000) == 3
    assert cost_micros(channel(inp=1), Usage(1, 0), 1_000_000) == 1


@given(
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**5),
    read=st.integers(0, 10**6),
    write=st.integers(0, 10**6),
    prices=st.tuples(*(st.integers(0, 10**8) for _ in range(4))),
    multiplier=st.integers(0, 5_000_000),
)
def test_the_admission_bound_covers_any_split_of_the_prompt(
    prompt: int, completion: int, read: int, write: int, prices: tuple[int, int, int, int], multiplier: int
) -> None:
    read = min(read, prompt)
    write = min(write, prompt - read)
    ch = channel(*prices)
    usage = Usage(prompt, completion, cache_read_tokens=read, cache_write_tokens=write)
    assert cost_micros(ch, usage, multiplier) <= max_cost_micros(ch, prompt, completion, multiplier)
