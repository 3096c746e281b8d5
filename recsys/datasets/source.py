"""Line-by-line reading of gzip-compressed source files, with row accounting.

Every adapter reads its inputs through `SourceFile`, which streams a
`.gz` text file one line at a time, checks the header, and counts the rows
read, kept and dropped (per reason). Those counts go into the manifest of the
prepared dataset, so a reader can see exactly what an adapter left out.

Adapters drop rows only for documented reasons (counted per reason). Any
other malformed line, and a file that cannot be decompressed or decoded,
raises `DataFormatError` naming the file and the line number.
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from recsys.errors import DataFormatError, NotFoundError

log = logging.getLogger(__name__)


class SourceFile:
    """One gzip-compressed text file of a public dataset.

    `rows()` yields `(line_number, fields)` with line numbers counted from 1
    (the header, where there is one, is line 1). An adapter calls `keep()`
    or `drop(reason)` once per data row it has read, and `error(line,
    reason)` builds the `DataFormatError` for a malformed line.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(
                f"source file not found: {self.path}; pass --source DIR pointing "
                "at the dataset folder, or set RECSYS_DATA_DIR"
            )
        self.read = 0
        self.kept = 0
        self.dropped: Counter[str] = Counter()

    def rows(
        self,
        *,
        delimiter: str = "\t",
        header: Sequence[str] | None = None,
        other_headers: Sequence[Sequence[str]] = (),
        quoted: bool = False,
        n_fields: int | None = None,
    ) -> Iterator[tuple[int, list[str]]]:
        """Yield `(line_number, fields)` for every data row.

        With `header`, line 1 must hold exactly those column names (or those
        of one of `other_headers`, for renamed copies of a file). With
        `quoted`, fields follow CSV quoting rules (so a quoted field may
        contain the delimiter). Every data row must have `n_fields` fields
        (default: as many as the header); a shorter or longer row raises
        `DataFormatError`. Empty lines are skipped without being counted.
        """
        expected = len(header) if header is not None else n_fields
        numbered = self._numbered_lines()
        # (first line, last line, fields): a quoted field may span lines.
        lines: Iterator[tuple[int, int, list[str]]]
        if quoted:
            reader = csv.reader((text for _, text in numbered), delimiter=delimiter)
            lines = _spans(reader)
        else:
            lines = (
                (n, n, text.rstrip("\r\n").split(delimiter)) for n, text in numbered
            )
        try:
            for line_number, last_line, fields in lines:
                if line_number == 1 and header is not None:
                    self._check_header(fields, delimiter, [header, *other_headers])
                    continue
                if fields == [] or fields == [""]:
                    continue
                self.read += 1
                if expected is not None and len(fields) != expected:
                    span = (
                        f"; a quoted field runs on to line {last_line}, so a "
                        "closing quote may be missing"
                        if last_line > line_number
                        else ""
                    )
                    raise self.error(
                        line_number,
                        f"{len(fields)} fields; expected {expected} "
                        f"separated by {delimiter!r}{span}",
                    )
                yield line_number, fields
        except csv.Error as exc:
            raise self.error(reader.line_num, f"invalid CSV: {exc}") from None
        if self.read == 0:
            raise self.error(1, "no data rows")

    def lines(self) -> Iterator[tuple[int, str]]:
        """Yield `(line_number, text)` for every non-empty line, counting reads.

        For formats that are not delimited rows, such as JSON Lines.
        """
        for line_number, text in self._numbered_lines():
            if text.strip():
                self.read += 1
                yield line_number, text

    def _numbered_lines(self) -> Iterator[tuple[int, str]]:
        """Stream the decompressed lines, each checked to be valid UTF-8.

        Invalid bytes are decoded with `surrogateescape` and then detected
        line by line, so the error names the line that contains them (a
        strict decoder fails on the first block read, at the wrong line).
        """
        line_number = 0
        try:
            with gzip.open(
                self.path, "rt", encoding="utf-8", errors="surrogateescape", newline=""
            ) as handle:
                for line_number, text in enumerate(handle, start=1):
                    if not text.isascii():
                        self._check_utf8(line_number, text)
                    yield line_number, text
        except (OSError, EOFError) as exc:
            raise self.error(
                line_number + 1, f"cannot decompress the gzip file: {exc}"
            ) from None

    def _check_utf8(self, line: int, text: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self.error(
                line, f"invalid UTF-8 at character {exc.start + 1}"
            ) from None

    def _check_header(
        self, fields: list[str], delimiter: str, valid: list[Sequence[str]]
    ) -> None:
        names = [field.strip() for field in fields]
        if names not in [list(header) for header in valid]:
            raise self.error(
                1,
                f"header is {delimiter.join(fields)!r}; expected "
                f"{delimiter.join(valid[0])!r}",
            )

    def keep(self) -> None:
        self.kept += 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def error(self, line: int, reason: str) -> DataFormatError:
        return DataFormatError(str(self.path), line, reason)

    def summary(self) -> dict[str, Any]:
        """Return the row counts for the manifest."""
        return {
            "file": self.path.name,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
        }

    def log_summary(self) -> None:
        log.info(
            "%s: read %d rows, kept %d, dropped %d%s",
            self.path.name,
            self.read,
            self.kept,
            sum(self.dropped.values()),
            "".join(f"; {n} {reason}" for reason, n in sorted(self.dropped.items())),
        )


def _spans(reader: Any) -> Iterator[tuple[int, int, list[str]]]:
    """Yield `(first line, last line, fields)` for each record of a csv reader."""
    last = 0
    for fields in reader:
        first, last = last + 1, reader.line_num
        yield first, last, fields


def parse_int(source: SourceFile, line: int, field: str, text: str) -> int:
    """Parse an integer field or raise `DataFormatError` naming the field."""
    try:
        return int(text)
    except ValueError:
        raise source.error(line, f"{field} is {text!r}; expected an integer") from None


def parse_item_list(source: SourceFile, line: int, field: str, text: str) -> list[str]:
    """Split a space-separated list of integer item ids; it must not be empty."""
    items = text.split()
    if not items:
        raise source.error(line, f"{field} is empty; expected item ids")
    for item in items:
        if not item.isdigit():
            raise source.error(
                line, f"{field} holds {item!r}; expected integer item ids"
            )
    return items
