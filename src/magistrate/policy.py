"""Policies: Markdown files with optional YAML front matter, parsed into a `Policy`.

A policy is identified by the SHA-256 of its exact text (front matter included), so a
decision can always be traced back to the words it was judged under.

Example:
    >>> policy = load_policy("spam")          # a bundled policy, or a path to a .md file
    >>> policy.id, policy.output, [r.id for r in policy.rules][:2]
    ('spam', <OutputFormat.JSON: 'json'>, ['SP2', 'SP2.a'])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from magistrate.errors import PolicyError

MAX_POLICY_BYTES = 1_000_000
"""Policies larger than this are refused: far past any model's useful context."""

RULE_ID = r"[A-Z]{1,6}[0-9]+(?:\.[A-Za-z0-9]+)*"
"""The shape of a rule id: `SP2`, `SP2.a`, `H2.f`, `DC0`."""

_RULE_ID_RE = re.compile(rf"\b({RULE_ID})\b")
_RULE_DEF_RE = re.compile(
    rf"^\s*(?:#{{1,6}}\s+|[-*+]\s+|\d+[.)]\s+)?(?:\*\*|__|`)?(?P<id>{RULE_ID})(?:\*\*|__|`)?"
    r"(?:\s*[:.)\-–—]|\s+\S)"
)
_HEADING_RE = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


class OutputFormat(StrEnum):
    """How the model must answer under a policy."""

    BINARY = "binary"
    """Exactly `0` (no violation) or `1` (violation)."""
    JSON = "json"
    """A JSON object: `violation`, `policy_category`, `rule_ids`, `confidence`, `rationale`."""
    LABELS = "labels"
    """One of the policy's own labels, e.g. `VALID`, `INVALID`, `INVALID + ESCALATE`."""


class SectionKind(StrEnum):
    """The four parts the policy guide asks for (criteria split into violates / safe)."""

    INSTRUCTIONS = "instructions"
    DEFINITIONS = "definitions"
    VIOLATES = "violates"
    SAFE = "safe"
    EXAMPLES = "examples"
    OTHER = "other"


@dataclass(frozen=True)
class Label:
    """One answer the policy allows.

    Attributes:
        name: The exact text the model answers with (`1`, `INVALID`, ...).
        violation: Whether this label means the content violates the policy.
        description: What the label means, for people and for lint.
    """

    name: str
    violation: bool
    description: str = ""


@dataclass(frozen=True)
class Section:
    """A heading of the policy and the lines under it (1-based, inclusive)."""

    kind: SectionKind
    title: str
    start_line: int
    end_line: int


@dataclass(frozen=True)
class Rule:
    """A rule id the policy defines (`SP2.a`), where, and its first line of text."""

    id: str
    line: int
    text: str


@dataclass(frozen=True)
class Example:
    """A labelled example inside the policy's EXAMPLES section.

    Attributes:
        answer: The answer text as written after `Answer:` / `Label:` / an arrow.
        line: 1-based line of the answer in the file.
        content: The example content when it could be found (the line(s) before the answer).
    """

    answer: str
    line: int
    content: str = ""


_DEFAULT_BINARY_LABELS = (
    Label("0", False, "does not violate the policy"),
    Label("1", True, "violates the policy"),
)


@dataclass(frozen=True)
class Policy:
    """A parsed policy.

    Attributes:
        id: Stable name of the policy (front matter `id`, else the file stem).
        version: Human version label (front matter `version`); the hash is the real identity.
        title: The first level-1 heading, or the id.
        text: The exact file text; what `hash` is computed over.
        body: The Markdown after the front matter; what the model reads.
        hash: SHA-256 hex digest of `text` encoded as UTF-8.
        output: How the model must answer.
        labels: Allowed answers, in order.
        rules: Rule ids the policy defines.
        sections: Recognised headings.
        examples: Labelled examples found in the EXAMPLES section.
        threshold: Score at or above which score mode reports a violation.
        body_start_line: 1-based file line where `body` starts (line numbers for lint).
        source: Where the policy was read from, if a file.
    """

    id: str
    version: str
    title: str
    text: str
    body: str
    hash: str
    output: OutputFormat
    labels: tuple[Label, ...]
    rules: tuple[Rule, ...] = ()
    sections: tuple[Section, ...] = ()
    examples: tuple[Example, ...] = ()
    threshold: float = 0.5
    body_start_line: int = 1
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the hash, for display."""
        return self.hash[:12]

    @cached_property
    def rule_ids(self) -> frozenset[str]:
        """Every rule id the policy defines."""
        return frozenset(rule.id for rule in self.rules)

    @cached_property
    def known_rule_ids(self) -> frozenset[str]:
        """Defined rule ids plus their parents (`SP2.a` makes `SP2` citable too)."""
        known: set[str] = set()
        for rule_id in self.rule_ids:
            parts = rule_id.split(".")
            known.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        return frozenset(known)

    def label(self, name: str) -> Label | None:
        """The label called `name`, or None."""
        return next((label for label in self.labels if label.name == name), None)

    def section(self, kind: SectionKind) -> Section | None:
        """The first section of a kind, or None."""
        return next((s for s in self.sections if s.kind == kind), None)


@dataclass(frozen=True)
class PolicyBundle:
    """Several policies judged together in one prompt (the "combined" multi-policy strategy).

    The model reads every policy and answers one label per policy; each answer is parsed and
    recorded under its own policy, so the decision log keeps one decision per policy.

    Example:
        >>> bundle = PolicyBundle.of(["hate", "violence"])
        >>> bundle.ids, bundle.short_hash
    """

    policies: tuple[Policy, ...]

    @classmethod
    def of(cls, policies: Iterable[Policy | str | Path]) -> PolicyBundle:
        """A bundle from policies, paths or bundled names.

        Raises:
            PolicyError: Fewer than two policies, or two share an id (answers are keyed by id).
        """
        loaded = tuple(p if isinstance(p, Policy) else load_policy(p) for p in policies)
        if len(loaded) < 2:
            raise PolicyError("A policy bundle needs at least two policies.")
        ids = [p.id for p in loaded]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise PolicyError(
                f"Policies in one bundle need distinct ids; {', '.join(dupes)} appears twice. "
                "Give each policy its own `id` in its front matter."
            )
        return cls(loaded)

    @property
    def ids(self) -> tuple[str, ...]:
        """The member policies' ids, in prompt order."""
        return tuple(p.id for p in self.policies)

    @property
    def id(self) -> str:
        """The members' ids joined with `+`."""
        return "+".join(self.ids)

    @property
    def hash(self) -> str:
        """SHA-256 over the members' hashes in order: changes when any member's text does."""
        return bundle_hash(p.hash for p in self.policies)

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the hash, for display."""
        return self.hash[:12]

    @property
    def known_rule_ids(self) -> frozenset[str]:
        """Every rule id that some member defines (or a parent of one)."""
        return frozenset().union(*(p.known_rule_ids for p in self.policies))


class _LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    violation: bool
    description: str = ""

    @field_validator("name", mode="before")
    @classmethod
    def _name_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class _FrontMatter(BaseModel):
    """The YAML front matter a policy may start with."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
    version: str | None = None
    title: str | None = None
    description: str | None = None
    output: Literal["binary", "json", "labels"] | None = None
    labels: list[_LabelSpec] | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value


def bundle_hash(hashes: Iterable[str]) -> str:
    """The identity of several policies taken together, in order: SHA-256 of their hashes."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def policy_hash(text: str) -> str:
    """SHA-256 hex digest of a policy's exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def builtin_policy_names() -> list[str]:
    """Names of the policies bundled with Magistrate."""
    folder = resources.files("magistrate") / "policies"
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".md"))


def looks_like_path(source: str) -> bool:
    """Whether a policy reference names a file rather than a bundled policy.

    A path holds a `/` or `\\`, starts with `.` or `~`, or ends with `.md`; anything else is
    a bare name, which only ever means a bundled policy.

    Example:
        >>> looks_like_path("spam"), looks_like_path("./spam"), looks_like_path("mine.md")
        (False, True, True)
    """
    return (
        "/" in source
        or "\\" in source
        or source.startswith((".", "~"))
        or source.lower().endswith(".md")
    )


def load_policy(source: str | Path) -> Policy:
    """Read and parse a policy from a file path or a bundled policy name.

    A bare name (`spam`) is always the bundled policy, whatever files the working directory
    holds, so a server's directory cannot replace one; a `Path`, or a string that looks like
    a path (`./spam`, `policies/spam.md`, `~/p.md`, `mine.md`), is always a file.

    Example:
        >>> load_policy("spam").source, load_policy("./my-policy.md").id
        ('builtin:spam', 'my-policy')

    Args:
        source: A path to a Markdown file, or the name of a bundled policy (`spam`).

    Raises:
        PolicyError: No bundled policy has that name, or the file is missing, empty, too
            large, not UTF-8, or its front matter is broken. The message says how to fix it.
    """
    if isinstance(source, str) and not looks_like_path(source):
        return _bundled_policy(source)
    path = Path(source).expanduser() if isinstance(source, str) else source
    if not path.exists():
        names = ", ".join(builtin_policy_names())
        raise PolicyError(
            f"Policy file {str(path)!r} does not exist. Pass the path to a Markdown policy "
            f"or the name of a bundled policy ({names})."
        )
    if not path.is_file():
        raise PolicyError(f"Policy path {str(path)!r} is not a file. Pass a Markdown file.")
    data = path.read_bytes()
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(
            f"Policy file {str(path)!r} is {len(data):,} bytes; the limit is "
            f"{MAX_POLICY_BYTES:,}. A useful policy is a few thousand tokens at most."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"Policy file {str(path)!r} is not valid UTF-8 (byte {exc.start}). Save it as "
            "UTF-8 text."
        ) from None
    return parse_policy(text, source=str(path), default_id=path.stem)


def _bundled_policy(name: str) -> Policy:
    """The bundled policy of that name (a bare name never reads the working directory)."""
    names = builtin_policy_names()
    if name not in names:
        raise PolicyError(
            f"No bundled policy {name!r} (bundled: {', '.join(names)}). For a policy file, "
            f"give its path: ./{name} for a file in the current directory."
        )
    bundled = resources.files("magistrate") / "policies" / f"{name}.md"
    return parse_policy(bundled.read_text(encoding="utf-8"), source=f"builtin:{name}")


def parse_policy(text: str, *, source: str | None = None, default_id: str = "policy") -> Policy:
    """Parse policy text (Markdown with optional YAML front matter) into a `Policy`.

    Raises:
        PolicyError: The text is empty, binary, or the front matter is broken.
    """
    where = source or "<policy text>"
    if "\x00" in text:
        raise PolicyError(f"Policy {where} contains NUL bytes: it is binary, not Markdown.")
    front, body, body_start = _split_front_matter(text, where)
    if not body.strip():
        raise PolicyError(
            f"Policy {where} is empty. Write the policy in Markdown: instructions, "
            "definitions, what violates, what is safe, examples."
        )
    lines = body.splitlines()
    sections = _find_sections(lines, body_start)
    output = OutputFormat(front.output) if front.output else _guess_output(front)
    labels = _labels(front, output, where)
    title = front.title or _first_title(lines) or (front.id or default_id)
    return Policy(
        id=front.id or default_id,
        version=front.version or "unversioned",
        title=title,
        text=text,
        body=body.strip("\n") + "\n",
        hash=policy_hash(text),
        output=output,
        labels=labels,
        rules=tuple(_find_rules(lines, sections, body_start)),
        sections=tuple(sections),
        examples=tuple(_find_examples(lines, sections, body_start)),
        threshold=front.threshold if front.threshold is not None else 0.5,
        body_start_line=body_start,
        source=source,
        meta=front.model_dump(exclude_none=True),
    )


def _split_front_matter(text: str, where: str) -> tuple[_FrontMatter, str, int]:
    """Split `---` YAML front matter from the body; return both and the body's first line."""
    if not text.startswith("---"):
        return _FrontMatter(), text, 1
    lines = text.splitlines(keepends=True)
    if lines[0].strip() != "---":
        return _FrontMatter(), text, 1
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() in ("---", "...")), None)
    if end is None:
        raise PolicyError(
            f"Policy {where}: the front matter opened with '---' on line 1 is never closed. "
            "Add a line with '---' after the YAML."
        )
    raw = "".join(lines[1:end])
    try:
        data = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 2}" if mark is not None else ""
        raise PolicyError(
            f"Policy {where}: the YAML front matter is broken ({line.strip() or 'unknown line'}: "
            f"{getattr(exc, 'problem', exc)}). Fix the YAML between the '---' lines."
        ) from None
    if not isinstance(data, dict):
        raise PolicyError(
            f"Policy {where}: the front matter must be a YAML mapping (key: value lines), "
            f"not a {type(data).__name__}."
        )
    try:
        front = _FrontMatter.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'front matter'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PolicyError(
            f"Policy {where}: the front matter is invalid ({problems}). Allowed keys: "
            f"{', '.join(_FrontMatter.model_fields)}."
        ) from None
    return front, "".join(lines[end + 1 :]), end + 2


def _guess_output(front: _FrontMatter) -> OutputFormat:
    if front.labels and {label.name for label in front.labels} != {"0", "1"}:
        return OutputFormat.LABELS
    return OutputFormat.BINARY


def _labels(front: _FrontMatter, output: OutputFormat, where: str) -> tuple[Label, ...]:
    if output is not OutputFormat.LABELS:
        if front.labels and {label.name for label in front.labels} != {"0", "1"}:
            raise PolicyError(
                f"Policy {where}: output '{output}' answers with 0 or 1, so its labels must be "
                "'0' and '1'. Use 'output: labels' for named labels."
            )
        if front.labels:
            return tuple(Label(s.name, s.violation, s.description) for s in front.labels)
        return _DEFAULT_BINARY_LABELS
    if not front.labels or len(front.labels) < 2:
        raise PolicyError(
            f"Policy {where}: 'output: labels' needs at least two labels in the front matter, "
            "e.g. labels: [{name: VALID, violation: false}, {name: INVALID, violation: true}]."
        )
    names = [label.name for label in front.labels]
    if len(set(names)) != len(names):
        raise PolicyError(f"Policy {where}: label names must be unique, got {names}.")
    if not any(s.violation for s in front.labels) or all(s.violation for s in front.labels):
        raise PolicyError(
            f"Policy {where}: labels need at least one violating and one non-violating label."
        )
    return tuple(Label(s.name, s.violation, s.description) for s in front.labels)


def _first_title(lines: list[str]) -> str | None:
    for line in lines:
        match = _HEADING_RE.match(line)
        if match and len(match["hashes"]) == 1:
            return match["title"].strip()
    return None


def classify_heading(title: str) -> SectionKind:
    """Which part of a policy a heading names (`## VIOLATES (1)` -> VIOLATES)."""
    t = title.lower()
    if "example" in t:
        return SectionKind.EXAMPLES
    if any(w in t for w in ("definition", "key terms", "glossary")):
        return SectionKind.DEFINITIONS
    if any(w in t for w in ("instruction", "how to answer", "task")):
        return SectionKind.INSTRUCTIONS
    if any(w in t for w in ("not violat", "non-violat", "safe", "(0)", "valid (", "out of scope")):
        return SectionKind.SAFE
    if any(w in t for w in ("violat", "not allowed", "prohibited", "disallowed", "(1)", "invalid")):
        return SectionKind.VIOLATES
    if any(w in t for w in ("allowed", "permitted", "acceptable")):
        return SectionKind.SAFE
    return SectionKind.OTHER


def _find_sections(lines: list[str], offset: int) -> list[Section]:
    """Sections by heading: each runs to the line before the next heading of its level or
    higher. One pass with a stack of open headings (linear in the text, whatever its shape)."""
    heads = [(i, m) for i, line in enumerate(lines) if (m := _HEADING_RE.match(line)) is not None]
    ends = [len(lines)] * len(heads)
    open_heads: list[tuple[int, int]] = []  # (index into heads, level), levels increasing
    for n, (i, match) in enumerate(heads):
        level = len(match["hashes"])
        while open_heads and open_heads[-1][1] >= level:
            ends[open_heads.pop()[0]] = i
        open_heads.append((n, level))
    sections: list[Section] = []
    for n, (i, match) in enumerate(heads):
        if len(match["hashes"]) == 1 and n == 0:
            continue  # the policy's title
        sections.append(
            Section(
                classify_heading(match["title"]), match["title"], i + offset, ends[n] - 1 + offset
            )
        )
    return sections


def _lines_of(
    kind: SectionKind, sections: Iterable[Section], lines: int, offset: int
) -> list[bool]:
    """For each line, whether it lies in a section of `kind` (sections nest at most six deep,
    so marking them is linear in the text)."""
    marked = [False] * lines
    for section in sections:
        if section.kind == kind:
            for line_no in range(section.start_line, section.end_line + 1):
                if 0 <= line_no - offset < lines:
                    marked[line_no - offset] = True
    return marked


def _find_rules(lines: list[str], sections: list[Section], offset: int) -> list[Rule]:
    rules: dict[str, Rule] = {}
    in_examples = _lines_of(SectionKind.EXAMPLES, sections, len(lines), offset)
    for i, line in enumerate(lines):
        line_no = i + offset
        if in_examples[i]:
            continue
        match = _RULE_DEF_RE.match(line)
        if match and match["id"] not in rules:
            rules[match["id"]] = Rule(match["id"], line_no, line.strip())
    return list(rules.values())


_ANSWER_RE = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*|__)?(?:answer|label|output|expected|verdict)(?:\*\*|__)?"
    r"\s*(?:\([^)]*\))?\s*:\s*(?:\*\*|__)?\s*(?P<answer>\S.*?)\s*$",
    re.IGNORECASE,
)
_ARROW_RE = re.compile(r"^(?P<content>.*\S)\s*(?:→|->|=>)\s*(?P<answer>\S.*?)\s*$")
_CONTENT_RE = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*|__)?(?:content|input|message|text|example)\b[^:]*:\s*(?P<c>.*)$",
    re.IGNORECASE,
)


def _find_examples(lines: list[str], sections: list[Section], offset: int) -> list[Example]:
    examples: list[Example] = []
    pending = ""
    in_examples = _lines_of(SectionKind.EXAMPLES, sections, len(lines), offset)
    for i, line in enumerate(lines):
        line_no = i + offset
        if not in_examples[i]:
            continue
        if (match := _ANSWER_RE.match(line)) is not None:
            examples.append(Example(match["answer"], line_no, pending))
            pending = ""
        elif (match := _CONTENT_RE.match(line)) is not None:
            pending = match["c"].strip()
        elif (match := _ARROW_RE.match(line)) is not None:
            examples.append(Example(match["answer"], line_no, match["content"].strip()))
    return examples


def find_rule_ids(text: str) -> list[str]:
    """Every token in `text` shaped like a rule id, in order, without repeats."""
    return list(dict.fromkeys(_RULE_ID_RE.findall(text)))
