"""A client address's text, as every usage record names it: ``ip_text`` is ``str`` remembered."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from keyrelay.gateway.client_ip import ip_text, parse_ip


@given(st.ip_addresses())
def test_ip_text_is_the_address_as_str_writes_it(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert ip_text(ip) == str(ip)
    assert ip_text(ip) == str(ip)  # remembered: the same text the second time


def test_a_mapped_address_is_named_as_its_ipv4_address() -> None:
    mapped = parse_ip("::ffff:192.0.2.7")
    assert mapped is not None and ip_text(mapped) == "192.0.2.7"
