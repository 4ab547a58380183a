"""The Python samples of README.md and docs/*.md, for test_docs.py and test_pytest_plugin.py.

A sample is a fenced ``python`` block. The line just before its fence may mark it:

- ``<!-- docs-test: skip (reason) -->``: not run (it starts an event loop, or is a file shown
  elsewhere); the reason is required.
- ``<!-- docs-test: pytester -->``: a pytest file, run with ``pytester`` by test_pytest_plugin.py.

Every other sample is run by test_docs.py. The samples of the pages in ``PROGRAM_PAGES`` are
complete programs (they start their own event loop): each runs as is, in a worker thread, with
nothing but the emulator's ``VSR_API_KEY`` and ``VSR_BASE_URL`` in the environment. The others
use top-level ``await`` and the names the harness provides (see docs/index.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM_PAGES = frozenset({ROOT / "docs" / "quickstart.md"})

_FENCE = re.compile(
    r"(?:^<!-- docs-test: (?P<mark>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
_MARK = re.compile(r"skip \((?P<reason>.+)\)|pytester")


@attrs.frozen
class Sample:
    """One fenced Python block."""

    page: Path
    line: int
    code: str
    mark: str | None  # None (run it), "skip" or "pytester"
    reason: str | None = None

    @property
    def program(self) -> bool:
        """A complete program, run as is with no name provided."""
        return self.page in PROGRAM_PAGES

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def samples() -> list[Sample]:
    """Every Python sample of every page, in order."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start("code"))  # the fence's line number
            mark, reason = match["mark"], None
            if mark is not None:
                parsed = _MARK.fullmatch(mark)
                if parsed is None:
                    raise ValueError(f"{page}:{line}: unknown mark {mark!r}")
                reason = parsed["reason"]
                mark = "skip" if reason else "pytester"
            found.append(Sample(page, line, match["code"], mark, reason))
    return found
