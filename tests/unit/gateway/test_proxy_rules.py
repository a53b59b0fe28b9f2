"""Which proxy carries which upstream: HTTPS_PROXY / HTTP_PROXY / NO_PROXY as read and as applied."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from keyrelay.config import Settings, load_settings
from keyrelay.gateway.proxy import Proxy, ProxyConfigError, ProxyRules

PROXY_VARIABLES = ("https_proxy", "http_proxy", "no_proxy", "all_proxy", "request_method")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate: none of the proxy variables, in either case, nor KEYRELAY_* ones."""
    for name in PROXY_VARIABLES:
        for variant in (name, name.upper(), f"KEYRELAY_{name.upper()}"):
            monkeypatch.delenv(variant, raising=False)
    return monkeypatch


# --- reading the environment ----------------------------------------------------------------------------------------


def test_standard_variables_in_either_case(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTPS_PROXY", "http://corp-proxy:3128")
    env.setenv("http_proxy", "http://other-proxy:8080")
    env.setenv("NO_PROXY", "internal.example,10.0.0.0/8")
    settings = Settings()
    assert (settings.https_proxy, settings.http_proxy, settings.no_proxy) == (
        "http://corp-proxy:3128",
        "http://other-proxy:8080",
        "internal.example,10.0.0.0/8",
    )


def test_lowercase_wins_and_empty_lowercase_unsets(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTPS_PROXY", "http://upper:1")
    env.setenv("https_proxy", "http://lower:2")
    env.setenv("HTTP_PROXY", "http://upper:3")
    env.setenv("http_proxy", "")
    settings = Settings()
    assert (settings.https_proxy, settings.http_proxy) == ("http://lower:2", None)


def test_http_proxy_in_a_cgi_environment_is_ignored(env: pytest.MonkeyPatch) -> None:
    # CVE-2016-1000110 ("httpoxy"): under CGI, a client's "Proxy:" header arrives as HTTP_PROXY.
    env.setenv("REQUEST_METHOD", "GET")
    env.setenv("HTTP_PROXY", "http://attacker:80")
    assert Settings().http_proxy is None


def test_keyrelay_variables_and_the_config_file_come_first(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("HTTPS_PROXY", "http://everyone:3128")
    config = tmp_path / "keyrelay.yaml"
    config.write_text(yaml.safe_dump({"https_proxy": "http://from-file:3128", "no_proxy": "a.example"}))
    assert load_settings(config).https_proxy == "http://from-file:3128"
    env.setenv("KEYRELAY_HTTPS_PROXY", "http://keyrelay-only:3128")
    env.setenv("KEYRELAY_NO_PROXY", "*")
    settings = load_settings(config)
    assert (settings.https_proxy, settings.no_proxy) == ("http://keyrelay-only:3128", "*")


def test_all_proxy_is_not_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("ALL_PROXY", "http://all:1080")
    settings = Settings()
    assert (settings.https_proxy, settings.http_proxy) == (None, None)


# --- applying them --------------------------------------------------------------------------------------------------


def test_scheme_picks_the_variable() -> None:
    rules = ProxyRules(https_proxy="http://secure:3128", http_proxy="plain:8080")
    assert rules.proxy_for("api.openai.com", 443, tls=True) == Proxy("secure", 3128)
    assert rules.proxy_for("vllm.internal", 8000, tls=False) == Proxy("plain", 8080)  # no scheme: http://
    assert ProxyRules(https_proxy="http://secure:3128").proxy_for("vllm.internal", 80, tls=False) is None


def test_credentials_become_basic_authorization_and_are_never_shown() -> None:
    proxy = Proxy.parse("http://us%40er:p%3Ass%20word@proxy.example/", "HTTPS_PROXY")
    assert (proxy.host, proxy.port, proxy.authorization) == ("proxy.example", 80, b"Basic dXNAZXI6cDpzcyB3b3Jk")
    assert "word" not in repr(proxy) and proxy.address == "proxy.example:80"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5h://u:secret@proxy:1080", "HTTPS_PROXY is socks5h://proxy: keyrelay reaches upstreams only through"),
        ("https://u:secret@proxy:443", "HTTPS_PROXY is https://proxy: keyrelay reaches upstreams only through"),
        ("http://u:secret@proxy:99999", "HTTPS_PROXY is http://proxy with an invalid port"),
        ("http://u:secret@:3128", "HTTPS_PROXY names no proxy host"),
    ],
)
def test_unusable_proxy_urls(url: str, message: str) -> None:
    with pytest.raises(ProxyConfigError) as info:
        ProxyRules(https_proxy=url).proxy_for("api.openai.com", 443, tls=True)
    assert str(info.value).startswith(message) and "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("", "api.openai.com", 443, False),
        ("*", "api.openai.com", 443, True),
        ("openai.com", "api.openai.com", 443, True),  # a name covers its subdomains
        ("openai.com", "openai.com", 443, True),
        (".openai.com", "openai.com", 443, True),  # the leading dot is ignored, as curl does
        ("*.openai.com", "api.openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),  # a suffix match stops at a dot
        ("OpenAI.COM", "api.openai.com", 443, True),  # case-insensitive
        ("api.openai.com:443", "api.openai.com", 443, True),
        ("api.openai.com:8443", "api.openai.com", 443, False),
        ("a.example, api.openai.com", "api.openai.com", 443, True),  # spaces around commas
        ("a.example b.example", "b.example", 443, True),  # spaces alone separate, too
        ("10.0.0.0/8", "10.1.2.3", 8000, True),
        ("10.0.0.0/8", "11.1.2.3", 8000, False),
        ("10.1.2.3", "10.1.2.3", 8000, True),
        ("10.0.0.0/8", "ten.example", 8000, False),  # networks match IP literals only, never resolved names
        ("fd00::/8", "fd12::1", 8000, True),
        ("[fd12::1]:8000", "fd12::1", 8000, True),
        ("[fd12::1]:8000", "fd12::1", 9000, False),
        ("", "localhost", 8000, True),  # loopback is never proxied
        ("", "vllm.localhost", 8000, True),
        ("", "127.0.0.5", 8000, True),
        ("", "::1", 8000, True),
        ("", "[::1]", 8000, True),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    rules = ProxyRules(https_proxy="http://proxy:3128", no_proxy=no_proxy)
    assert rules.bypassed(host, port) is bypassed
    assert (rules.proxy_for(host, port, tls=True) is None) is bypassed


_label = st.from_regex(r"[a-z][a-z0-9-]{0,9}", fullmatch=True)  # a host name label (never an IP address)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(domain=_domain, prefix=st.lists(_label, max_size=3).map(lambda labels: "".join(f"{x}." for x in labels)))
def test_a_no_proxy_name_covers_exactly_itself_and_its_subdomains(domain: str, prefix: str) -> None:
    rules = ProxyRules(https_proxy="http://proxy:3128", no_proxy=domain)
    assert rules.bypassed(prefix + domain, 443)
    assert not rules.bypassed(prefix + "x" + domain, 443)  # "xexample.com" is another name
    assert not rules.bypassed(domain + ".evil", 443)
