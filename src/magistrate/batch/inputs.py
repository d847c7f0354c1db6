"""Batch inputs: files, globs, folders and stdin, read row by row with a column mapping.

Every input is streamed: JSON Lines and CSV/TSV a line at a time, Parquet a record batch at
a time, so memory does not grow with the input. A row that cannot be judged (not JSON, no
text, empty, too long, not UTF-8) becomes a `Row` with a `problem`, never an exception that
stops the job: a batch job degrades per item.

Example:
    >>> sources = expand_inputs(["posts/*.jsonl"])
    >>> rows = read_rows(sources, Columns(text="body", id="post_id"))
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from magistrate.errors import ConfigError, InputError, MissingDependency
from magistrate.item import DEFAULT_MAX_CHARS, Item, Turn

TEXT_COLUMNS = ("text", "content", "prompt", "user_input", "message", "body")
"""Where the content is looked for when no --text-col is given (first match wins)."""
TURNS_COLUMNS = ("messages", "conversation", "turns")
"""Columns that hold a conversation: a list of {"role", "content"} objects."""
FORMATS = ("jsonl", "csv", "tsv", "parquet", "text")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
}
STDIN = "-"


@dataclass(frozen=True)
class Columns:
    """Which columns hold the content (a text, or a list of turns) and the item id."""

    text: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Source:
    """One input: a file (with its format) or stdin."""

    path: str
    format: str
    label: str | None = field(default=None, compare=False)
    """How output rows and messages name the input (default its path): the service shows
    `upload`, or the path under its input root, never where it keeps the file."""

    @property
    def shown(self) -> str:
        return self.label or self.path

    @property
    def name(self) -> str:
        return "stdin" if self.path == STDIN else Path(self.shown).name

    def fingerprint(self) -> str:
        """What identifies the input in a job's identity: its absolute path."""
        return self.path if self.path == STDIN else str(Path(self.path).resolve())


@dataclass(frozen=True)
class Row:
    """One input row: an item to judge, or the reason it cannot be judged.

    Attributes:
        number: Position in the job's whole input (0-based, across every source).
        source: The source's path (`-` for stdin).
        line: Position within its source (1-based: the line, or the row after a header).
        id: The item id: the id column's value, else `<file name>:<line>`.
        item: The checked item; None when the row has a problem.
        problem: Why the row cannot be judged (it gets an output row with status
            `invalid_input` and this reason).
    """

    number: int
    source: str
    line: int
    id: str
    item: Item | None
    problem: str | None = None

    @property
    def key(self) -> str:
        """What the job's input hash covers for this row: its id and content hash (or
        problem), so a resumed job notices an input that changed under it."""
        what = self.item.hash if self.item is not None else f"problem:{self.problem}"
        return f"{self.id}\x1f{what}"


def expand_inputs(inputs: Sequence[str], *, format: str | None = None) -> list[Source]:
    """Sources from paths, globs (`data/*.jsonl`, `**`), folders (every supported file in
    them, recursively, sorted) and `-` (stdin, JSON Lines unless `format` says otherwise).

    Raises:
        InputError: A path does not exist, a glob or folder matches no supported file, a
            file has an unknown extension, or stdin is given twice.
    """
    if not inputs:
        raise InputError("Give at least one input: a file, a glob, a folder, or '-' for stdin.")
    if format is not None and format not in FORMATS:
        raise InputError(f"Unknown input format {format!r}; use one of {', '.join(FORMATS)}.")
    sources: list[Source] = []
    for spec in inputs:
        if spec == STDIN:
            if any(s.path == STDIN for s in sources):
                raise InputError("stdin ('-') can be read only once.")
            sources.append(Source(STDIN, format or "jsonl"))
        elif any(ch in spec for ch in "*?["):
            matched = [p for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
            if not matched:
                raise InputError(f"No file matches {spec!r}.")
            sources.extend(_source(Path(p), format) for p in matched)
        elif Path(spec).is_dir():
            found = [p for p in sorted(Path(spec).rglob("*")) if p.is_file() and _kind(p)]
            if not found:
                raise InputError(
                    f"Folder {spec!r} holds no .jsonl, .csv, .tsv, .parquet or .txt file."
                )
            sources.extend(_source(p, format) for p in found)
        elif Path(spec).is_file():
            sources.append(_source(Path(spec), format))
        else:
            raise InputError(f"Input {spec!r} does not exist (give a file, a glob or a folder).")
    return sources


def _kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def _source(path: Path, format: str | None) -> Source:
    kind = format or _kind(path)
    if kind is None:
        raise InputError(
            f"{path}: unknown file type; use .jsonl, .csv, .tsv, .parquet or .txt (optionally "
            ".gz), or say which with --input-format."
        )
    if kind == "parquet" and path.suffix == ".gz":
        raise InputError(f"{path}: Parquet files are compressed inside; do not gzip them.")
    return Source(str(path), kind)


def input_hash(previous: str, row: Row) -> str:
    """The running hash over the rows read so far (start from "")."""
    return hashlib.sha256(f"{previous}\x1e{row.key}".encode("utf-8", "surrogatepass")).hexdigest()


def read_rows(
    sources: Sequence[Source],
    columns: Columns | None = None,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[Row]:
    """Every row of every source, in order, streamed.

    Raises:
        ConfigError: A source has no column that could hold the content (name it with
            --text-col), or no id column named by --id-col.
        InputError: A file cannot be opened.
    """
    columns = columns or Columns()
    number = 0
    for source in sources:
        for line, record, problem in _records(source):
            yield make_row(number, source, line, record, problem, columns, max_chars)
            number += 1


def make_row(
    number: int,
    source: Source,
    line: int,
    record: Mapping[str, Any] | None,
    problem: str | None,
    columns: Columns,
    max_chars: int,
) -> Row:
    """The row for one record of `source` (or its `problem`): checked item, id, or why it
    cannot be judged. `line` is its position in the source (1-based)."""
    fallback_id = f"{source.name}:{line}"
    where = f"{source.name} row {line}"
    if record is None:
        return Row(number, source.shown, line, fallback_id, None, f"{where}: {problem}")
    raw_id = record.get(columns.id) if columns.id else record.get("id")
    item_id = fallback_id if raw_id is None or raw_id == "" else str(raw_id)
    try:
        if "\x00" in item_id:
            raise InputError("the id holds a NUL character (U+0000)")
        if not _encodable(item_id):
            raise InputError("the id is not valid UTF-8 text")
        content = record[_content_column(record, columns)]
        item = Item.of(_content(content, where), id=item_id, max_chars=max_chars)
    except InputError as exc:
        return Row(number, source.shown, line, item_id, None, f"{where}: {exc}")
    return Row(number, source.shown, line, item_id, item)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _content(value: Any, where: str) -> str | list[Turn | Mapping[str, str]]:
    if isinstance(value, str):
        return value  # Item.of refuses lone surrogates: bytes that were not UTF-8
    if isinstance(value, list) and all(isinstance(t, Mapping) for t in value):
        return list(value)
    if value is None:
        raise InputError("the content is missing (null)")
    raise InputError(
        f"the content is a {type(value).__name__}; give text, or a list of "
        '{"role", "content"} turns'
    )


def _content_column(record: Mapping[str, Any], columns: Columns) -> str:
    if columns.text is not None:
        if columns.text not in record:
            raise InputError(f"the row has no column {columns.text!r}")
        return columns.text
    for name in (*TEXT_COLUMNS, *TURNS_COLUMNS):
        if name in record:
            return name
    raise InputError(
        f"no column holds the content (looked for {', '.join(TEXT_COLUMNS + TURNS_COLUMNS)});"
        f" name it with --text-col (columns: {column_names(record)})"
    )


def column_names(record: Mapping[str, Any]) -> str:
    """A row's column names for an error message. Names that do not look like names (a
    file without a header row takes its first row's values as names) are not quoted, so a
    message never carries content."""
    names = [str(k) for k in record]
    if all(len(n) <= 40 and n.replace("_", "").replace("-", "").isalnum() for n in names):
        return ", ".join(names) or "none"
    return f"{len(names)} columns whose names are not names: does the file lack a header row?"


_Record = tuple[int, Mapping[str, Any] | None, str | None]


def _records(source: Source) -> Iterator[_Record]:
    if source.format == "parquet" and source.path == STDIN:
        raise InputError("Parquet cannot be streamed from stdin; give the file's path.")
    try:
        with _open_binary(source) as stream:
            yield from records(stream, source.format, where=source.shown)
    except (OSError, EOFError, csv.Error) as exc:  # a truncated .gz, a disk error, ...
        raise InputError(
            f"{source.shown} could not be read to the end ({type(exc).__name__}: {exc}). Fix or "
            "replace the file; the same command then resumes the job."
        ) from None


def records(stream: IO[bytes], format: str, *, where: str = "input") -> Iterator[_Record]:
    """(line, record, problem) for each row of a stream in `format`: the record as a
    mapping, or None with the reason it cannot be read. Blank lines are skipped but counted.

    Raises:
        InputError: A Parquet stream cannot be opened at all (`where` names it).
    """
    if format == "parquet":
        yield from _parquet_records(stream, where)
    elif format == "jsonl":
        yield from _jsonl_records(stream)
    elif format == "text":
        yield from _text_records(stream)
    else:
        yield from _csv_records(stream, "\t" if format == "tsv" else ",")


def _open_binary(source: Source) -> AbstractContextManager[IO[bytes]]:
    if source.path == STDIN:
        return nullcontext(sys.stdin.buffer)  # not ours to close
    try:
        if source.path.endswith(".gz"):
            return cast("AbstractContextManager[IO[bytes]]", gzip.open(source.path, "rb"))
        return open(source.path, "rb")
    except OSError as exc:
        raise InputError(f"Cannot open {source.shown}: {exc.strerror}.") from None


def _decoded(data: bytes, n: int) -> tuple[str | None, str | None]:
    if b"\x00" in data:
        return None, "it holds NUL bytes (binary, not text)"
    try:
        return data.decode("utf-8-sig" if n == 1 else "utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"it is not valid UTF-8 (bad byte at offset {exc.start})"


def _jsonl_records(stream: IO[bytes]) -> Iterator[_Record]:
    for n, data in enumerate(stream, 1):
        text, problem = _decoded(data, n)
        if text is not None and not text.strip():
            continue
        if text is not None:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                problem = f"it is not JSON ({exc.msg} at column {exc.colno})"
            else:
                if isinstance(record, dict):
                    yield n, record, None
                    continue
                problem = f"it is a JSON {type(record).__name__}, not an object"
        yield n, None, problem


def _text_records(stream: IO[bytes]) -> Iterator[_Record]:
    for n, data in enumerate(stream, 1):
        text, problem = _decoded(data, n)
        if text is None:
            yield n, None, problem
        elif text.strip():
            yield n, {"text": text.rstrip("\r\n")}, None


def _csv_records(stream: IO[bytes], delimiter: str) -> Iterator[_Record]:
    # Undecodable bytes become lone surrogates here and make that row a problem (see
    # `_content`), instead of an exception that would stop the reader mid-file.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(2**31 - 1)  # long fields are refused by the item's size check
    reader = csv.DictReader(text, delimiter=delimiter)
    for n, record in enumerate(reader, 1):
        if None in record:  # more fields than the header names
            yield n, None, "it has more fields than the header"
            continue
        yield n, record, None
    text.detach()


def parquet_module() -> Any:
    """`pyarrow.parquet`, or an error that says how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency(
            "Parquet needs pyarrow: pip install 'magistrate[parquet]'"
        ) from None
    return pq


def _parquet_records(stream: IO[bytes], where: str) -> Iterator[_Record]:
    pq = parquet_module()
    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise InputError(f"{where} is not a readable Parquet file: {exc}") from None
    n = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            n += 1
            yield n, record, None


def count_rows(source: Source) -> int | None:
    """How many rows a source holds, when that is cheap to know (for the progress bar):
    Parquet from its footer, line files by counting lines; None for stdin."""
    if source.path == STDIN:
        return None
    if source.format == "parquet":
        pq = parquet_module()
        try:
            return int(pq.ParquetFile(source.path).metadata.num_rows)
        except Exception:
            return None
    lines = 0
    with _open_binary(source) as stream:
        while chunk := stream.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - (1 if source.format in ("csv", "tsv") else 0))


def check_columns(sources: Sequence[Source], columns: Columns) -> None:
    """Fail fast, before any judging, when a file's first row has no content column (or
    no id column named by --id-col): every later row of that file would fail the same way.

    Raises:
        ConfigError: Naming the file, the columns it has, and the option to pass.
    """
    for source in sources:
        if source.path == STDIN:
            continue
        first = next((r for _, r, _ in _records(source) if r is not None), None)
        if first is None:
            continue
        if columns.id is not None and columns.id not in first:
            raise ConfigError(
                f"{source.shown} has no column {columns.id!r} for --id-col; it has "
                f"{column_names(first)}."
            )
        try:
            _content_column(first, columns)
        except InputError as exc:
            raise ConfigError(f"{source.shown}: {exc}.") from None
