"""The wire helpers, and each of httpx's internals the package leans on (all in ``_http.py``).

An httpx upgrade that moves or changes one of those internals fails a test here, by name,
instead of a poll somewhere slowing down or breaking.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx
import pytest

from vsr_async import APIConnectionError, APITimeoutError, ResponseValidationError
from vsr_async._http import (
    default_transport,
    error_from_httpx,
    log_sent,
    shown_url,
    text_appender,
    transport_for,
    url_appender,
)

pytestmark = pytest.mark.anyio

ODD_IDS = ["task-1", "a b", "é/ü", "x?y#z", "100%", "[::1]", "a;b=c", "~'()*!", "+&$,@:"]


def test_transport_for_is_the_transport_send_picks() -> None:
    """``transport_for`` answers httpx's own choice: the client's transport, or a mount's
    (as for a proxy from the environment) for the URLs it covers."""
    default = httpx.MockTransport(lambda _: httpx.Response(200))
    mounted = httpx.MockTransport(lambda _: httpx.Response(200))
    client = httpx.AsyncClient(transport=default, mounts={"https://api.example": mounted})
    assert transport_for(client, httpx.URL("https://api.example/v1/")) is mounted
    assert transport_for(client, httpx.URL("https://other.example/v1/")) is default


def test_default_transport_is_the_one_the_client_was_made_with() -> None:
    """``default_transport`` answers the client's own transport, not a mount's: the session
    gives the API's requests connections of their own only when that is the one they'd use."""
    default = httpx.MockTransport(lambda _: httpx.Response(200))
    mounted = httpx.MockTransport(lambda _: httpx.Response(200))
    client = httpx.AsyncClient(transport=default, mounts={"https://api.example": mounted})
    assert default_transport(client) is default
    plain = httpx.AsyncClient(trust_env=False)  # (no proxy from the environment)
    assert transport_for(plain, httpx.URL("https://api.example/")) is default_transport(plain)


#: Results URLs of every shape a base URL gives: a path, a port, an IDN host, IPv6.
RESULT_URLS = [
    "https://api.example/root/v1/result/",
    "http://127.0.0.1:8080/v1/result/",
    "https://xn--bcher-kva.example/a%20b/v1/result/",
    "https://[::1]:443/p/v1/result/",
]


@pytest.mark.parametrize("base", RESULT_URLS)
def test_the_fast_url_is_the_one_httpx_parses(base: str) -> None:
    """The appender builds on httpx's parsed URL (its private ``_uri_reference``), and the URL
    it builds is the one httpx would parse, for IDs with every kind of character to encode.
    Should an httpx upgrade change how URLs are kept, it falls back to parsing: this test
    fails then, so the slower path is a decision, not an accident."""
    append = url_appender(httpx.URL(base))
    assert append.__name__ == "built", "the installed httpx keeps URLs differently: check _http.py"
    for task_id in ODD_IDS:
        fast = append(task_id)
        parsed = httpx.URL(f"{base}{quote(task_id, safe='')}")
        assert str(fast) == str(parsed)
        assert fast.raw_path == parsed.raw_path
        assert fast.host == parsed.host
        assert fast.port == parsed.port


@pytest.mark.parametrize("base", RESULT_URLS)
def test_the_text_url_is_the_one_httpx_builds(base: str) -> None:
    """The aiohttp wire's URLs, appended as text, are the text of httpx's URLs."""
    as_text, as_url = text_appender(httpx.URL(base)), url_appender(httpx.URL(base))
    for task_id in ODD_IDS:
        assert as_text(task_id) == str(as_url(task_id))


async def test_log_sent_logs_the_line_httpx_send_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A request sent to the transport directly logs the very line ``send()`` would have."""
    transport = httpx.MockTransport(lambda _: httpx.Response(204))
    async with httpx.AsyncClient(transport=transport) as client:
        request = client.build_request("GET", "https://api.example/v1/result/a%20b")
        with caplog.at_level(logging.INFO, logger="httpx"):
            response = await client.send(request)
            log_sent(request, response)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(lines) == 2
    assert lines[0] == lines[1]


def test_log_sent_does_nothing_with_the_logger_off(caplog: pytest.LogCaptureFixture) -> None:
    """Off, the line costs nothing and shows nowhere."""
    request = httpx.Request("GET", "https://api.example/")
    with caplog.at_level(logging.WARNING, logger="httpx"):
        log_sent(request, httpx.Response(200, request=request))
    assert not caplog.records


@pytest.mark.parametrize(
    ("exc", "error", "says"),
    [
        (httpx.ConnectError("refused"), APIConnectionError, "failed: ConnectError: refused"),
        (httpx.RemoteProtocolError("dropped"), APIConnectionError, "RemoteProtocolError"),
        (httpx.ReadTimeout("slow"), APITimeoutError, "timed out (ReadTimeout)"),
        (httpx.PoolTimeout("full"), APITimeoutError, "timed out (PoolTimeout)"),
        (httpx.DecodingError("bad gzip"), ResponseValidationError, "could not be decoded"),
    ],
)
def test_httpx_errors_become_ours(exc: httpx.HTTPError, error: type, says: str) -> None:
    """Each httpx failure maps to one of our errors, naming what was being done."""
    mapped = error_from_httpx(exc, "GET https://api.example/x")
    assert type(mapped) is error
    assert says in str(mapped)
    if error is not ResponseValidationError:
        assert str(mapped).startswith("GET https://api.example/x")


def test_shown_url_drops_the_query() -> None:
    """A signed URL's signature (in its query) never reaches a message."""
    assert shown_url("https://cdn.example/v.mp4?sig=s3cret&exp=1") == "https://cdn.example/v.mp4"
    assert shown_url("https://cdn.example/v.mp4") == "https://cdn.example/v.mp4"
