"""`AsyncVSRClient`, the facade itself: its constructor's argument checks, the key and the base
URL from the environment, its repr, and the context manager. What it hands on is tested with the
layer that does it: `test_session.py`, `test_retry.py`, `test_tasks.py`, `test_wait.py`,
`test_watch.py`, `test_download.py`; the key's secrecy in `test_secrets.py`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _helpers import BASE, SECRET, Script, make_client

from vsr_async import AsyncVSRClient
from vsr_async._config import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_env")]


# Construction.


def test_key_missing_is_refused() -> None:
    """No key as argument or in $VSR_API_KEY is a ValueError naming the variable."""
    with pytest.raises(ValueError, match="VSR_API_KEY"):
        AsyncVSRClient()


@pytest.mark.parametrize("key", [123, b"sk-bytes", ["sk"]])
def test_key_of_the_wrong_type_is_a_type_error(key: object) -> None:
    """A key that is not a string is a TypeError naming api_key (not an AttributeError)."""
    with pytest.raises(TypeError, match="api_key must be a string"):
        AsyncVSRClient(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_key_blank_is_refused(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank key, given or from the environment, is refused."""
    with pytest.raises(ValueError, match="no API key"):
        AsyncVSRClient(key)
    monkeypatch.setenv("VSR_API_KEY", key)
    with pytest.raises(ValueError, match="no API key"):
        AsyncVSRClient()


async def test_key_from_env_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without api_key, $VSR_API_KEY is the Bearer token."""
    monkeypatch.setenv("VSR_API_KEY", "from-env")
    script = Script()
    client = AsyncVSRClient(
        base_url=BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(script))
    )
    await client.get_task("task-1")
    assert script.requests[0].headers["Authorization"] == "Bearer from-env"


async def test_key_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit api_key wins over $VSR_API_KEY."""
    monkeypatch.setenv("VSR_API_KEY", "from-env")
    script = Script()
    await make_client(script).get_task("task-1")
    assert script.requests[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_base_url_default() -> None:
    """Without base_url or $VSR_BASE_URL, the provider's documented URL is used."""
    assert AsyncVSRClient(SECRET).base_url == DEFAULT_BASE_URL
    assert DEFAULT_BASE_URL == "https://zcbservice.aizfw.cn/kyyReactApiServer"


def test_base_url_from_env_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """$VSR_BASE_URL overrides the default; base_url overrides both."""
    monkeypatch.setenv("VSR_BASE_URL", "https://env.example.com/api")
    assert AsyncVSRClient(SECRET).base_url == "https://env.example.com/api"
    assert AsyncVSRClient(SECRET, base_url=BASE).base_url == BASE


@pytest.mark.parametrize("suffix", ["/", "//"])
async def test_base_url_trailing_slash(suffix: str) -> None:
    """Trailing slashes on base_url never double the slash in request paths."""
    script = Script()
    client = make_client(script, base_url=BASE + suffix)
    assert client.base_url == BASE
    await client.get_task("task-1")
    assert str(script.requests[0].url) == f"{BASE}/v1/result/task-1"


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        pytest.param("https://user:pass@api.example.com", ValueError, id="credentials"),
        pytest.param("https://user@api.example.com", ValueError, id="user"),
        pytest.param("ftp://api.example.com", ValueError, id="ftp"),
        pytest.param("ws://api.example.com", ValueError, id="ws"),
        pytest.param("file:///etc/passwd", ValueError, id="file"),
        pytest.param("api.example.com/api", ValueError, id="no-scheme"),
        pytest.param("/kyyReactApiServer", ValueError, id="relative"),
        pytest.param("https://", ValueError, id="no-host"),
        pytest.param("https://api.example.com:port", ValueError, id="bad-port"),
        pytest.param("https://api.example.com/?x=1", ValueError, id="query"),
        pytest.param("https://api.example.com/#x", ValueError, id="fragment"),
        pytest.param(b"https://api.example.com", TypeError, id="bytes"),
    ],
)
def test_base_url_refused(base_url: Any, error: type[Exception]) -> None:
    """A base_url that is not a plain http(s) root is refused at construction."""
    with pytest.raises(error, match="base_url"):
        AsyncVSRClient(SECRET, base_url=base_url)


def test_plain_http_to_remote_host_warns() -> None:
    """Plain http to a non-loopback host warns, pointing at the caller's line."""
    with pytest.warns(UserWarning, match="plain http") as record:
        AsyncVSRClient(SECRET, base_url="http://api.example.com")
    assert record[0].filename == __file__
    assert SECRET not in str(record[0].message)


@pytest.mark.parametrize(
    "base_url",
    ["http://localhost:8000", "http://127.0.0.1", "http://127.3.2.1:1", "http://[::1]:8080/api"],
)
def test_plain_http_to_loopback_is_quiet(base_url: str) -> None:
    """Plain http to a loopback host (the emulator, a proxy) is fine (warnings are errors)."""
    assert AsyncVSRClient(SECRET, base_url=base_url).base_url == base_url


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, TypeError),
        ({"max_retries": "3"}, TypeError),
        ({"max_retries": True}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_connections": -5}, ValueError),
        ({"max_connections": 2.0}, TypeError),
        ({"max_connections": False}, TypeError),
    ],
)
def test_counts_are_validated(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """max_retries (≥ 0) and max_connections (≥ 1) must be integers in range."""
    (name,) = kwargs
    with pytest.raises(error, match=name):
        AsyncVSRClient(SECRET, **kwargs)


def test_counts_at_their_minimum() -> None:
    """Zero retries and a single connection are valid settings."""
    client = AsyncVSRClient(SECRET, max_retries=0, max_connections=1)
    assert (client.max_retries, client.max_connections) == (0, 1)
    assert AsyncVSRClient(SECRET).max_retries == DEFAULT_MAX_RETRIES


# repr and the context manager.


async def test_repr_shows_url_and_state_never_the_key() -> None:
    """The repr names the base URL and open/closed, and never the key."""
    client = make_client(Script())
    assert repr(client) == f"<AsyncVSRClient base_url={BASE!r} open>"
    await client.aclose()
    assert repr(client) == f"<AsyncVSRClient base_url={BASE!r} closed>"
    assert SECRET not in repr(client)
    assert SECRET not in str(client)


async def test_async_with_returns_the_client_and_closes_it() -> None:
    """`async with` gives the client itself and closes it on the way out, even on error."""
    client = AsyncVSRClient(SECRET)
    async with client as entered:
        assert entered is client
    assert client._session._http.is_closed
    other = AsyncVSRClient(SECRET)
    with pytest.raises(KeyError):
        async with other:
            raise KeyError("boom")
    assert other._session._http.is_closed
