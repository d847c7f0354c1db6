"""Evaluation datasets: built-in public sets by name, or any JSONL/CSV/TSV/Parquet file.

Built-in names resolve to files under a data directory laid out like the project's shared
data folder (`--data-dir` or `$MAGISTRATE_DATA_DIR`); nothing is downloaded.

    openai-moderation-2022   openai_moderation_2022/samples-1680.dev70.jsonl.gz
                             positive = any of S,H,V,HR,SH,S3,H2,V2 is 1, else negative (the
                             binary convention of the technical report); in the per-category
                             labels a missing flag is unknown (None), not 0
    toxicchat                toxicchat/toxicchat0124_test.dev70.csv, positive = toxicity 1,
                             `jailbreaking` as a second label (`toxicchat:human` keeps only the
                             human-annotated rows; `toxicchat:train` is the train split)
    sms-spam                 sms_spam_collection/SMSSpamCollection.dev70.tsv, positive = spam

Files: one text and one label per row (`Columns`; the bundled `examples/spam.jsonl` golden
set is this shape), or the teen-safety validation shape (`--shape teen-safety`): a prompt,
a response and a label for each in one row, judged as the prompt or as the response.

A dataset is identified by the SHA-256 of its rows (ids, texts, gold labels), so results
name exactly what they were computed on.

Example:
    >>> ds = load_dataset("toxicchat", data_dir="../shared/data").sample(200, seed=1)
    >>> ds.hash[:12], len(ds), ds.positives
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from magistrate.errors import ConfigError, InputError, MissingDependency
from magistrate.item import Turn, render_turns

DATA_DIR_ENV = "MAGISTRATE_DATA_DIR"
TEXT_COLUMNS = ("text", "content", "prompt", "user_input", "message")
LABEL_COLUMNS = ("label", "gold", "toxicity", "violation")
TRUE_VALUES = frozenset(
    {
        "1",
        "true",
        "yes",
        "y",
        "t",
        "positive",
        "unsafe",
        "harmful",
        "spam",
        "toxic",
        "violation",
        "violating",
        "flagged",
    }
)
FALSE_VALUES = frozenset(
    {
        "0",
        "false",
        "no",
        "n",
        "f",
        "negative",
        "safe",
        "harmless",
        "ham",
        "benign",
        "ok",
        "none",
        "not_violating",
    }
)
MODERATION_FLAGS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
MODERATION_NAMES = {
    "S": "sexual",
    "H": "hate",
    "V": "violence",
    "HR": "harassment",
    "SH": "self-harm",
    "S3": "sexual/minors",
    "H2": "hate/threatening",
    "V2": "violence/graphic",
}


PARTS = ("tune", "report")


def id_rank(item_id: str) -> str:
    """Where an item falls when a dataset is split into halves: the SHA-256 of its id."""
    return hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Example:
    """One item with its gold labels.

    Attributes:
        id: Stable id within the dataset.
        text: The content to classify.
        gold: True when the item violates (the positive class), None when unknown.
        labels: Further gold labels by name (categories, `jailbreaking`), None when unknown.
    """

    id: str
    text: str
    gold: bool | None
    labels: Mapping[str, bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """Examples plus where they came from."""

    name: str
    source: str
    examples: tuple[Example, ...]
    positive: str = "label is positive"

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def hash(self) -> str:
        """SHA-256 over the rows (id, text, gold, labels), order included."""
        digest = hashlib.sha256()
        for e in self.examples:
            row = [e.id, e.text, e.gold, sorted(e.labels.items())]
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            digest.update(b"\n")
        return digest.hexdigest()

    @property
    def positives(self) -> int:
        return sum(1 for e in self.examples if e.gold)

    def labelled(self) -> Dataset:
        """Only the examples whose gold label is known."""
        return replace(self, examples=tuple(e for e in self.examples if e.gold is not None))

    def limit(self, n: int) -> Dataset:
        """The first n examples."""
        return replace(self, examples=self.examples[:n], name=f"{self.name}[:{n}]")

    def part(self, name: str) -> Dataset:
        """One of two fixed halves, `tune` or `report`, stratified by gold label.

        Each item's place is decided by the SHA-256 of its id, so the halves never change with
        a seed, a sample size or the order of the file: thresholds and wording are chosen on
        `tune` and figures reported on `report`, and no item is ever in both.

        Raises:
            ConfigError: The name is not `tune` or `report`.
        """
        if name not in PARTS:
            raise ConfigError(f"A dataset part is one of {', '.join(PARTS)}, not {name!r}.")
        groups: dict[bool | None, list[int]] = {}
        for i, e in enumerate(self.examples):
            groups.setdefault(e.gold, []).append(i)
        chosen: set[int] = set()
        for members in groups.values():
            ranked = sorted(members, key=lambda i: id_rank(self.examples[i].id))
            half = len(ranked) // 2
            chosen.update(ranked[:half] if name == "tune" else ranked[half:])
        return replace(
            self,
            examples=tuple(e for i, e in enumerate(self.examples) if i in chosen),
            name=f"{self.name}/{name}",
        )

    def sample(self, n: int, *, seed: int = 0) -> Dataset:
        """n examples, stratified by gold label (proportions kept), in the original order."""
        if n >= len(self.examples):
            return self
        rng = random.Random(seed)
        groups: dict[bool | None, list[int]] = {}
        for i, e in enumerate(self.examples):
            groups.setdefault(e.gold, []).append(i)
        chosen: list[int] = []
        total = len(self.examples)
        for key in sorted(groups, key=str):
            members = groups[key]
            take = round(n * len(members) / total)
            chosen += rng.sample(members, min(take, len(members)))
        taken = set(chosen)
        rest = [i for i in range(total) if i not in taken]
        while len(chosen) < n and rest:  # rounding: top up at random
            chosen.append(rest.pop(rng.randrange(len(rest))))
        chosen = sorted(chosen[:n])
        return replace(
            self,
            examples=tuple(self.examples[i] for i in chosen),
            name=f"{self.name}~{n}@{seed}",
        )


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: the argument, else `$MAGISTRATE_DATA_DIR`.

    Raises:
        ConfigError: Neither is set, or it is not a directory.
    """
    raw = explicit or os.environ.get(DATA_DIR_ENV)
    if not raw:
        raise ConfigError(
            f"Built-in datasets live in a data directory: pass --data-dir DIR or set "
            f"${DATA_DIR_ENV} (the Makefile uses ../shared/data)."
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"Data directory {path} does not exist.")
    return path


# -- built-in sets ---------------------------------------------------------------------------


def _openai_moderation(root: Path, variant: str | None) -> Dataset:
    path = root / "openai_moderation_2022" / "samples-1680.dev70.jsonl.gz"
    examples = []
    for n, row in enumerate(_jsonl_rows(path)):
        flags = {k: row.get(k) for k in MODERATION_FLAGS}
        labels = {MODERATION_NAMES[k]: (None if v is None else bool(v)) for k, v in flags.items()}
        # Binary task (the report's convention, 522/1,680 positive): unsafe when any flag is 1,
        # else safe. A missing flag stays unknown (None) in the per-category labels.
        gold = any(v == 1 for v in flags.values())
        examples.append(Example(f"oaim-{n:04d}", _text(row["prompt"], path, n), gold, labels))
    return Dataset(
        "openai-moderation-2022", str(path), tuple(examples), "any of the 8 category flags is 1"
    )


def _toxicchat(root: Path, variant: str | None) -> Dataset:
    folder = root / "toxicchat"
    if variant == "train":
        path = folder / "toxicchat0124_train_human_annotated.csv"
    elif variant in (None, "human", "test"):
        path = folder / "toxicchat0124_test.dev70.csv"
    else:
        raise ConfigError(f"toxicchat has the variants :human, :train, not {variant!r}.")
    examples = []
    for n, row in enumerate(_csv_rows(path)):
        if variant == "human" and row.get("human_annotation") != "True":
            continue
        labels = {"jailbreaking": _flag(row.get("jailbreaking"), path, n)}
        gold = _flag(row.get("toxicity"), path, n)
        rid = row.get("conv_id") or f"row-{n:05d}"
        examples.append(Example(f"tc-{rid}", _text(row["user_input"], path, n), gold, labels))
    name = "toxicchat" + (f":{variant}" if variant else "")
    return Dataset(name, str(path), tuple(examples), "toxicity == 1")


def _sms_spam(root: Path, variant: str | None) -> Dataset:
    path = root / "sms_spam_collection" / "SMSSpamCollection.dev70.tsv"
    examples = []
    for n, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in ("ham", "spam"):
            raise InputError(f"{path} line {n + 1}: expected 'ham' or 'spam', a tab, the text.")
        examples.append(Example(f"sms-{n:05d}", text, label == "spam"))
    return Dataset("sms-spam", str(path), tuple(examples), "label == spam")


BUILTIN: dict[str, Callable[[Path, str | None], Dataset]] = {
    "openai-moderation-2022": _openai_moderation,
    "toxicchat": _toxicchat,
    "sms-spam": _sms_spam,
}


# -- generic files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """How to read a generic file: which columns hold what, and which values are positive."""

    text: str | None = None
    label: str | None = None
    id: str | None = None
    positive: frozenset[str] = field(default_factory=frozenset)
    """Label values that mean "violating" (case-insensitive); default: common true words."""
    labels: tuple[str, ...] = ()
    """Further label columns, kept by name in `Example.labels` (policies judged together)."""
    shape: str = "rows"
    """`rows` (one text and one label per row) or `teen-safety` (see `load_paired`)."""
    target: str = "prompt"
    """For `teen-safety`: judge the `prompt`, or the `response` in its conversation."""


def load_dataset(
    name: str,
    *,
    data_dir_path: str | Path | None = None,
    columns: Columns | None = None,
) -> Dataset:
    """A built-in dataset by name (`toxicchat`, `toxicchat:human`, ...) or a file by path.

    Raises:
        ConfigError: Unknown name, missing data directory, bad column mapping.
        InputError: A file that cannot be read, or rows without text.
    """
    base, _, variant = name.partition(":")
    if base in BUILTIN and not Path(name).exists():
        root = data_dir(data_dir_path)
        try:
            return BUILTIN[base](root, variant or None)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"Dataset {name!r} expects {exc.filename} under the data directory {root}."
            ) from None
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{name!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor a file."
        )
    columns = columns or Columns()
    if columns.shape == "teen-safety":
        return load_paired(path, columns)
    if columns.shape != "rows":
        raise ConfigError(f"Unknown dataset shape {columns.shape!r}; use rows or teen-safety.")
    return load_file(path, columns)


PROMPT_COLUMNS = ("prompt", "user_prompt", "user_input", "input", "query")
RESPONSE_COLUMNS = (
    "response",
    "model_response",
    "assistant_response",
    "example_response",
    "output",
)


def load_paired(path: Path, columns: Columns) -> Dataset:
    """The teen-safety validation shape: a prompt, a response and a label for each, per row.

    `target` chooses what is judged: the prompt alone (gold = the prompt's label), or the
    response within its conversation (`user: ...` then `assistant: ...`, gold = the
    response's label). Both labels are kept as `prompt` and `response` in `Example.labels`.
    Labels may be yes/no words, 0/1, or severity tiers such as `DC0`-`DC3` (tier 0 is safe,
    any higher tier violates).

    Raises:
        ConfigError: The prompt, response or label columns cannot be found.
        InputError: A row without text, or a label that is none of the above.
    """
    if columns.target not in ("prompt", "response"):
        raise ConfigError(f"--target is prompt or response, not {columns.target!r}.")
    rows = _rows(path)
    keys = list(rows[0])
    lowered = {k.lower(): k for k in keys}
    prompt_col = columns.text if columns.target == "prompt" and columns.text else None
    prompt_col = prompt_col or _guess([k.lower() for k in keys], PROMPT_COLUMNS, path, "--text-col")
    prompt_col = lowered.get(prompt_col, prompt_col)
    response_col = lowered.get(
        _guess([k.lower() for k in keys], RESPONSE_COLUMNS, path, "--text-col")
    )
    label_cols = {}
    for side in ("prompt", "response"):
        found = [k for k in keys if side in k.lower() and _is_label_name(k)]
        if columns.label and side == columns.target:
            found = [columns.label]
        if not found:
            raise ConfigError(
                f"{path}: which column holds the {side}'s label? Expected a column such as "
                f"{side}_label; pass --label-col (columns: {keys})."
            )
        label_cols[side] = found[0]
    positive = {v.lower() for v in columns.positive}
    examples = []
    for n, row in enumerate(rows):
        prompt = _text(row.get(prompt_col), path, n)
        golds = {
            side: _tier_gold(row.get(col), positive, path, n) for side, col in label_cols.items()
        }
        if columns.target == "response":
            response = _text(row.get(str(response_col)), path, n)
            text = render_turns([Turn("user", prompt), Turn("assistant", response)])
        else:
            text = prompt
        rid = str(row.get(columns.id or "id") or f"row-{n:05d}")
        examples.append(Example(f"{rid}#{columns.target}", text, golds[columns.target], golds))
    label = label_cols[columns.target]
    return Dataset(f"{path.name}:{columns.target}", str(path), tuple(examples), f"{label} violates")


def _is_label_name(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in ("label", "class", "rating", "tier", "verdict"))


def _tier_gold(value: Any, positive: set[str], path: Path, n: int) -> bool | None:
    """A yes/no label, or a severity tier (`DC0` safe, `DC1`-`DC3` violating)."""
    if isinstance(value, str) and not positive:
        tier = re.fullmatch(r"\s*[A-Za-z]{1,6}-?(\d+)(?:\.[A-Za-z0-9]+)*\s*", value)
        if tier is not None:
            return int(tier.group(1)) > 0
    return _gold(value, positive, path, n)


def _rows(path: Path) -> list[dict[str, Any]]:
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json")):
        rows: list[dict[str, Any]] = list(_jsonl_rows(path))
    elif suffixes.endswith((".csv", ".csv.gz")):
        rows = list(_csv_rows(path))
    elif suffixes.endswith((".tsv", ".tsv.gz")):
        rows = list(_csv_rows(path, delimiter="\t"))
    elif suffixes.endswith(".parquet"):
        rows = _parquet_rows(path)
    else:
        raise ConfigError(f"{path}: use a .jsonl, .csv, .tsv or .parquet file.")
    if not rows:
        raise InputError(f"{path} holds no rows.")
    return rows


def load_file(path: Path, columns: Columns) -> Dataset:
    """Rows of a .jsonl(.gz), .csv, .tsv or .parquet file mapped through `columns`."""
    rows = _rows(path)
    keys = list(rows[0])
    text_col = columns.text or _guess(keys, TEXT_COLUMNS, path, "--text-col")
    label_col = columns.label or next((k for k in LABEL_COLUMNS if k in keys), None)
    extra = tuple(dict.fromkeys((*((label_col,) if columns.labels else ()), *columns.labels)))
    for col in (text_col, label_col, columns.id, *extra):
        if col is not None and col not in keys:
            raise ConfigError(f"{path} has no column {col!r}; it has {', '.join(keys)}.")
    positive = {v.lower() for v in columns.positive}
    examples = []
    for n, row in enumerate(rows):
        gold = None if label_col is None else _gold(row.get(label_col), positive, path, n)
        labels = {col: _gold(row.get(col), positive, path, n) for col in extra if col}
        rid = str(row.get(columns.id or "id") or f"row-{n:05d}")
        examples.append(Example(rid, _text(row.get(text_col), path, n), gold, labels))
    described = f"{label_col} in {sorted(positive)}" if positive else f"{label_col} is true"
    return Dataset(path.name, str(path), tuple(examples), described)


def _guess(keys: Sequence[str], options: Iterable[str], path: Path, flag: str) -> str:
    for option in options:
        if option in keys:
            return option
    raise ConfigError(f"{path}: which column holds the text? Pass {flag} (columns: {keys}).")


def _gold(value: Any, positive: set[str], path: Path, n: int) -> bool | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if positive:
        return text in positive
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if text in TRUE_VALUES:
        return True
    if text in FALSE_VALUES:
        return False
    raise InputError(
        f"{path} row {n + 1}: label {value!r} is not a yes/no value; say which values are "
        "positive with --positive VALUE."
    )


def _flag(value: Any, path: Path, n: int) -> bool | None:
    return _gold(value, set(), path, n)


def _text(value: Any, path: Path, n: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{path} row {n + 1} has no text to classify.")
    return value


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 (byte {exc.start}).") from None


def _jsonl_rows(path: Path) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n + 1} is not JSON: {exc.msg}.") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {n + 1} is not a JSON object.")
        yield row


def _csv_rows(path: Path, delimiter: str = ",") -> Iterable[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    yield from reader


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency(
            "Parquet datasets need pyarrow: pip install 'magistrate[parquet]'"
        ) from None
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows
