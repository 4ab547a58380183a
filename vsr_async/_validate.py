"""Checks of the caller's input, done before anything is sent. Misuse raises `ValueError`
(or `TypeError` for a value of the wrong type), naming the argument and what was expected."""

from __future__ import annotations

import ipaddress
import math
import re
import warnings

import httpx

from ._config import API_KEY_ENV
from ._models import Model

_MAX_ID_LENGTH = 512
_MAX_PORT = 65535


def check_api_key(api_key: object) -> None:
    """Refuse a missing key, or one the HTTP layer would refuse (and quote in its error)."""
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a string, got {type(api_key).__name__}")
    if not api_key.strip():
        raise ValueError(f"no API key: pass api_key= or set the {API_KEY_ENV} variable")
    if api_key != api_key.strip() or not (api_key.isascii() and api_key.isprintable()):
        # Never quoted: the point is to keep it out of messages.
        raise ValueError("the API key has whitespace, control or non-ASCII characters")


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it can be one path segment of the query URL."""
    if not isinstance(task_id, str):
        raise TypeError(f"a task ID must be a string, got {type(task_id).__name__}")
    problem = None
    if not task_id.strip():
        problem = "is empty"
    elif task_id in (".", ".."):
        problem = "would change the URL's path"
    elif "/" in task_id or "\\" in task_id:
        problem = "contains '/' or '\\'"
    elif task_id != task_id.strip():
        problem = "has leading or trailing whitespace"
    elif not task_id.isprintable():
        problem = "contains control characters"
    elif len(task_id) > _MAX_ID_LENGTH:
        problem = f"is longer than {_MAX_ID_LENGTH} characters"
    if problem:
        raise ValueError(f"invalid task ID {task_id[:80]!r}: it {problem}")
    return task_id


def check_seconds(name: str, value: object, *, finite: bool = True) -> float:
    """Return ``value`` if it is a positive number of seconds (and finite, if asked)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value > 0 and (math.isfinite(value) or not finite)):
        kind = "positive, finite" if finite else "positive"
        raise ValueError(f"{name} must be a {kind} number of seconds, got {value!r}")
    return float(value)


def check_rate(name: str, value: object) -> float:
    """Return ``value`` if it is a positive, finite number of requests per second."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of requests per second, got {type(value).__name__}"
        )
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"{name} must be a positive, finite number of requests per second, got {value!r}"
        )
    return float(value)


def check_count(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_model(model: object) -> str:
    """Return the wire name of a `Model` or of a model given as a string."""
    if isinstance(model, Model):
        return model.value
    if not isinstance(model, str) or not model.strip() or model != model.strip():
        example = Model.SUPER_RESOLUTION_1080P_LOWFPS.value
        raise ValueError(f"model must be a Model or a model name like {example!r}, got {model!r}")
    return model


def check_http_url(name: str, url: object) -> httpx.URL:
    """Parse ``url``, which must be an absolute ``http(s)`` URL."""
    if not isinstance(url, str):
        raise TypeError(f"{name} must be a string, got {type(url).__name__}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{name} {_redacted(url)!r} is not a URL: {exc}") from None
    if any(char.isspace() for char in url):  # httpx would quietly percent-encode it
        raise ValueError(f"{name} {_redacted(url)!r} is not a URL: it has whitespace in it")
    if parsed.port is not None and parsed.port > _MAX_PORT:
        raise ValueError(f"{name} {_redacted(url)!r} is not a URL: its port is past {_MAX_PORT}")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{name} must be an http:// or https:// URL, got {_redacted(url)!r}")
    return parsed


def check_base_url(url: object) -> str:
    """Return the API's root without its trailing slash; warn when the key would go unencrypted."""
    parsed = check_http_url("base_url", url)
    if parsed.userinfo:
        raise ValueError("base_url must not contain credentials: pass the key as api_key")
    raw = str(url)
    if "?" in raw or "#" in raw or raw != raw.strip():  # even an empty "?": we append paths
        raise ValueError(f"base_url must not have a query, a fragment or spaces, got {url!r}")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        warnings.warn(
            f"base_url {url!r} is plain http: the API key would cross the network unencrypted",
            stacklevel=3,
        )
    return str(url).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redacted(url: str) -> str:
    """``url`` with any ``user:password@`` masked, for messages."""
    return re.sub(r"(?<=//)[^/?#]*@", "***@", url, count=1)
