"""Lists of task IDs (or video URLs) from arguments, files and stdin, checked before any work."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from vsr_async._validate import check_http_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: A comment starts a line or follows whitespace, so ``a#b`` stays one item.
_COMMENT = re.compile(r"(?:^|\s)#.*")
#: Bad lines quoted in one error message; the rest are counted.
MAX_REPORTED = 10


class BadLinesError(ValueError):
    """Some lines are not valid items; the message names each with its place."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        super().__init__("\n".join(shown))
        self.problems = problems


@attrs.define
class Collected:
    """Items in first-seen order, without duplicates, and the count of duplicates dropped."""

    items: list[str] = attrs.field(factory=list)
    duplicates: int = 0
    _seen: set[str] = attrs.field(factory=set, repr=False)
    _problems: list[str] = attrs.field(factory=list, repr=False)

    def add_lines(self, lines: Iterable[str], source: str, check: Callable[[str], object]) -> None:
        """Add one item per line; blanks and ``#`` comments are skipped, whitespace trimmed."""
        for number, line in enumerate(lines, 1):
            text = _COMMENT.sub("", line).strip()
            if text:
                self._add(text, f"{source}, line {number}", check)

    def add_arguments(self, values: Iterable[str], check: Callable[[str], object]) -> None:
        """Add items given on the command line, exactly as given."""
        for number, value in enumerate(values, 1):
            self._add(value, f"argument {number}", check)

    def result(self) -> Collected:
        """This, if every item was valid.

        Raises:
            BadLinesError: Naming every invalid item and where it was.
        """
        if self._problems:
            raise BadLinesError(self._problems)
        return self

    def _add(self, item: str, where: str, check: Callable[[str], object]) -> None:
        if len(item.split()) > 1:
            self._problems.append(f"{where}: {item[:80]!r} {_why_split(item)}")
            return
        try:
            check(item)
        except ValueError as exc:
            self._problems.append(f"{where}: {exc}")
            return
        if item in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(item)
            self.items.append(item)


def _why_split(item: str) -> str:
    """What is wrong with an item that has whitespace inside."""
    if "://" in item.split(maxsplit=1)[0]:
        return "has a space in it: a URL cannot contain spaces (write each as %20)"
    return "holds more than one item: give one per line"


def check_video_url(url: str) -> None:
    """Refuse anything but an absolute ``http(s)`` URL, as `create_task` would."""
    check_http_url("video URL", url)
