"""The one cattrs converter: the wire's field names and its loose types, kept out of the models.

The provider's answers are loose: the status's case varies, ``created`` is seconds or
milliseconds, ``error`` is a string or ``{"code", "message"}``, extra fields come and go. The
hooks below accept all of that and refuse what is not a task, so that `parse_task` returns a
`Task` or raises `ResponseValidationError`, nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._errors import ResponseValidationError
from ._models import Task, TaskError, TaskStatus, parse_status
from ._validate import check_task_id


def _type_error(expected: str, value: object) -> TypeError:
    return TypeError(f"expected {expected}, got {type(value).__name__} {value!r:.40}")


def _id(value: object, _: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _type_error("a string", value)
    return check_task_id(str(value))  # an ID we could not query again is no ID


def _status(value: object, _: object) -> TaskStatus | str:
    if not isinstance(value, str) or not value.strip():
        raise _type_error("a status string", value)
    return parse_status(value)


def _optional_str(value: object, _: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _type_error("a string", value)


def _optional_number(value: object, _: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _type_error("a number", value)
    return float(value)  # a numeric string too; anything else raises ValueError


def _optional_timestamp(value: object, _: object) -> int | None:
    number = _optional_number(value, _)
    return None if number is None else int(number)


def _optional_error(value: object, _: object) -> TaskError | None:
    if value is None or isinstance(value, TaskError):
        return value
    if isinstance(value, str):
        return TaskError(message=value)
    if isinstance(value, dict):
        message, code = value.get("message"), value.get("code")
        return TaskError(
            message=str(message) if message is not None else json.dumps(value),
            code=None if code is None else str(code),
        )
    return TaskError(message=str(value))


converter = cattrs.Converter()
converter.register_structure_hook(
    Task,
    make_dict_structure_fn(
        Task,
        converter,
        id=override(struct_hook=_id),
        status=override(struct_hook=_status),
        object=override(struct_hook=_optional_str),
        created=override(struct_hook=_optional_timestamp),
        video_url=override(struct_hook=_optional_str),
        actual_duration=override(rename="actualDuration", struct_hook=_optional_number),
        error=override(struct_hook=_optional_error),
    ),
)


def parse_task(content: bytes, **defaults: Any) -> Task:
    """Parse a task from a response body; ``defaults`` fill fields the body leaves out.

    Raises:
        ResponseValidationError: The body is not JSON, not an object, or not a task.
    """
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        raise ResponseValidationError.from_body("the answer is not JSON", content) from None
    if not isinstance(data, dict):
        raise ResponseValidationError.from_body("the answer is not a JSON object", content)
    if defaults:
        data = defaults | data
    try:
        return converter.structure(data, Task)
    except (cattrs.BaseValidationError, TypeError, ValueError, OverflowError) as exc:
        reason = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ResponseValidationError.from_body(
            f"the answer is not a task: {reason}", content
        ) from None
