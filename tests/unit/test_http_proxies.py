"""remote/http/proxies.py: which proxy a URL goes through."""

from __future__ import annotations

import httpx
import pytest

from cachefs.remote.http.proxies import ProxyChoice

VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def proxy_of(choice: ProxyChoice, url: str) -> str | None:
    proxy = choice.for_url(httpx.URL(url))
    return None if proxy is None else f"{proxy.host}:{proxy.port}"


def test_no_variables_no_proxy() -> None:
    choice = ProxyChoice(None)
    assert not choice.any
    assert proxy_of(choice, "http://store.example/data/") is None


def test_scheme_variables_all_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:3128")
    monkeypatch.setenv("ALL_PROXY", "http://any.example:8080")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,.internal.example,localhost")
    choice = ProxyChoice(None)
    assert choice.any
    assert proxy_of(choice, "http://store.example/x") == "plain.example:3128"
    assert proxy_of(choice, "https://store.example/x") == "any.example:8080"
    assert proxy_of(choice, "http://127.0.0.1:8080/x") is None
    assert proxy_of(choice, "http://a.internal.example/x") is None
    assert proxy_of(choice, "http://localhost:9000/x") is None


def test_lower_case_wins_and_a_bare_host_port_is_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://upper.example:1")
    monkeypatch.setenv("https_proxy", "lower.example:3128")
    assert proxy_of(ProxyChoice(None), "https://store.example/x") == "lower.example:3128"
    assert ProxyChoice(None).for_url(httpx.URL("https://s/x")).url.scheme == "http"


def test_explicit_proxy_carries_everything_with_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "*")
    choice = ProxyChoice("http://us%40er:p%3Ass@proxy.example:3128")
    proxy = choice.for_url(httpx.URL("http://127.0.0.1/x"))
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert proxy.authorization == b"Basic dXNAZXI6cDpzcw=="  # base64 of "us@er:p:ss"
    assert ProxyChoice("http://proxy.example").for_url(httpx.URL("https://x/")).authorization is None
