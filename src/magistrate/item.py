"""Items: the content to classify, a text or a conversation. Always untrusted.

Content is checked once, here, before anything else sees it: empty, oversized, binary or
undecodable content is refused with an `InputError` that says how to fix it.

Example:
    >>> item = Item.of("Buy cheap followers now!", id="msg-1")
    >>> item.text, len(item.hash)
    ('Buy cheap followers now!', 64)
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from magistrate.errors import InputError

DEFAULT_MAX_CHARS = 32_000
"""Default size limit for one item, in characters (about 8,000 tokens of English)."""

_ROLES = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation to classify."""

    role: str
    content: str


@dataclass(frozen=True)
class Item:
    """Something to classify: a text, or a conversation rendered into one text.

    Attributes:
        text: The content exactly as the model will see it inside the user turn.
        id: The caller's id for the item (a message id, a row number), if any.
        turns: The conversation, when the item was built from one.
        metadata: Caller data carried through to the decision; never sent to the model.
    """

    text: str
    id: str | None = None
    turns: tuple[Turn, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the content (the text for plain items, the turns for conversations);
        computed once per item."""
        return content_hash(self.text)

    @classmethod
    def of(
        cls,
        content: str | bytes | Sequence[Turn | Mapping[str, str]],
        *,
        id: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        metadata: Mapping[str, Any] | None = None,
    ) -> Item:
        """Build a checked item from text, UTF-8 bytes, or a list of turns.

        Raises:
            InputError: The content is empty, too large, binary, or not valid UTF-8; or the
                id holds a NUL character (the decision log cannot store it).
        """
        where = f"item {id!r}" if id is not None else "the content"
        if id is not None and "\x00" in id:
            raise InputError(
                f"{where}: the id holds a NUL character (U+0000), which the decision log "
                "cannot store. Remove it."
            )
        if isinstance(content, bytes):
            content = decode_content(content, where=where)
        turns: tuple[Turn, ...] = ()
        if isinstance(content, str):
            text = content
        else:
            turns = tuple(_turn(t, where) for t in content)
            if not turns:
                raise InputError(f"{where} is an empty conversation. Give at least one turn.")
            text = render_turns(turns)
        check_text(text, where=where, max_chars=max_chars)
        return cls(text=text, id=id, turns=turns, metadata=dict(metadata or {}))


def _turn(turn: Turn | Mapping[str, str], where: str) -> Turn:
    if isinstance(turn, Turn):
        role, content = turn.role, turn.content
    else:
        role, content = str(turn.get("role", "")), turn.get("content", "")
    if role not in _ROLES:
        raise InputError(f"{where}: a turn has role {role!r}; use one of {', '.join(_ROLES)}.")
    if not isinstance(content, str):
        raise InputError(f"{where}: every turn's content must be text.")
    return Turn(role, content)


def render_turns(turns: Sequence[Turn]) -> str:
    """A conversation as one block of text for the user turn: `role: content` per turn."""
    return "\n\n".join(f"{t.role}: {t.content}" for t in turns)


def content_hash(text: str) -> str:
    """SHA-256 hex digest of content; decisions store this even when they drop the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def decode_content(data: bytes, *, where: str = "the content") -> str:
    """Decode bytes as strict UTF-8 (a leading BOM is dropped).

    Raises:
        InputError: The bytes are not UTF-8, or look binary (NUL bytes).
    """
    if b"\x00" in data:
        raise InputError(
            f"{where} contains NUL bytes, so it looks binary, not text. Classify text only; "
            "extract the text from documents or images first."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{where} is not valid UTF-8 (bad byte at offset {exc.start}). Convert it to UTF-8, "
            "for example with `iconv -f latin1 -t utf-8`."
        ) from None


def check_text(
    text: str, *, where: str = "the content", max_chars: int = DEFAULT_MAX_CHARS
) -> None:
    """Refuse text that cannot be classified.

    Raises:
        InputError: Empty or whitespace-only, over `max_chars`, binary, or holding unpaired
            surrogates (text that came from undecodable bytes).
    """
    if not text.strip():
        raise InputError(f"{where} is empty or only whitespace. There is nothing to classify.")
    if len(text) > max_chars:
        raise InputError(
            f"{where} is {len(text):,} characters; the limit is {max_chars:,}. Split it into "
            "smaller items, or raise the limit with --max-chars (or max_chars=...)."
        )
    if "\x00" in text:
        raise InputError(f"{where} contains NUL characters, so it looks binary, not text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{where} holds characters that are not valid Unicode (unpaired surrogates, "
            "usually from undecodable bytes). Decode the source as UTF-8 first."
        ) from None
    controls = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f\v")
    if controls > max(8, len(text) // 10):
        raise InputError(
            f"{where} is mostly control characters ({controls}), so it looks binary, not text."
        )


def item_from_record(record: Mapping[str, Any], *, index: int, max_chars: int) -> Item:
    """An item from one JSON object: `text` (or `content`, or `messages` turns), `id`, rest kept.

    Raises:
        InputError: The record has no usable content field.
    """
    item_id = str(record.get("id", index))
    metadata = {k: v for k, v in record.items() if k not in ("text", "content", "messages")}
    for key in ("text", "content"):
        value = record.get(key)
        if isinstance(value, str):
            return Item.of(value, id=item_id, max_chars=max_chars, metadata=metadata)
    messages = record.get("messages")
    if isinstance(messages, list):
        return Item.of(messages, id=item_id, max_chars=max_chars, metadata=metadata)
    raise InputError(
        f"record {index} has no 'text', 'content' or 'messages' field; found "
        f"{', '.join(sorted(record)) or 'no fields'}. Name the content field 'text'."
    )


def parse_jsonl(
    data: str, *, max_chars: int = DEFAULT_MAX_CHARS, where: str = "input"
) -> list[Item]:
    """Items from JSON Lines text, one object per non-blank line.

    Raises:
        InputError: A line is not a JSON object or has no content, naming the line.
    """
    items: list[Item] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} line {n} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise InputError(f"{where} line {n} must be a JSON object with a 'text' field.")
        try:
            items.append(item_from_record(record, index=n, max_chars=max_chars))
        except InputError as exc:
            raise InputError(f"{where} line {n}: {exc}") from None
    return items
