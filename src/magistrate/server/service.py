"""What the HTTP layer calls: policies, judging with back-pressure and caching, keys.

`Service` holds one backend, one store and one `Classifier` per (policy text, mode, effort),
all built on the same engine as the CLI. It knows nothing about HTTP; `app.py` maps its
errors onto status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magistrate.backends import Backend, backend_for
from magistrate.decision import Decision
from magistrate.engine import Classifier, CombinedClassifier
from magistrate.errors import ConfigError, InputError, MagistrateError, PolicyError
from magistrate.item import Item
from magistrate.policy import (
    Policy,
    PolicyBundle,
    builtin_policy_names,
    load_policy,
    parse_policy,
)
from magistrate.prompt import Effort, Mode
from magistrate.server.limits import Admission, RateLimiter, TTLCache
from magistrate.server.metrics import Metrics
from magistrate.server.schemas import ItemIn, ServerSettings
from magistrate.store import Recorder, Store
from magistrate.store.store import ApiKey

ANONYMOUS = ApiKey(
    id="anonymous",
    name="anonymous",
    prefix="",
    scopes=("admin", "classify"),
    created_at="",
)
"""The caller when the server does not require keys (loopback by default)."""

SCOPES = ("classify", "admin")


class NotFound(MagistrateError):
    """No such policy, version or decision."""


class TooLarge(MagistrateError):
    """More items (or bytes) than the server accepts in one request."""


class Forbidden(MagistrateError):
    """The caller's key lacks the scope, or the server forbids the feature."""


@dataclass(frozen=True)
class Judged:
    """One decision and whether it came from the result cache."""

    decision: Decision
    cached: bool


class Service:
    """The moderation service's state and operations.

    Args:
        settings: The server's settings.
        backend: A ready backend (tests pass a scripted one); default from `settings.model`.
        store: A ready store; default from `settings.database`.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        backend: Backend | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.database)
        self.backend = backend or backend_for(
            settings.model, base_url=settings.base_url, endpoint=settings.endpoint
        )
        self.recorder = Recorder(self.store, keep_content=settings.log_content)
        self.metrics = Metrics()
        self.admission = Admission(self.backend.max_concurrency, settings.queue)
        self.rate = RateLimiter(settings.rate_per_minute)
        self.results: TTLCache[Decision] = TTLCache(settings.cache_ttl_s, settings.cache_entries)
        self.draining = False
        self._gate = asyncio.Semaphore(max(1, self.backend.max_concurrency))
        self._classifiers: dict[tuple[str, str, str], Classifier] = {}
        self._combined: dict[tuple[str, str], CombinedClassifier] = {}
        self._parsed: dict[str, Policy] = {}
        self._builtin_names = frozenset(builtin_policy_names())
        self._builtins: dict[str, Policy] = {}
        self._active: tuple[float, dict[str, str]] = (0.0, {})
        if settings.policies_dir:
            self.load_directory(Path(settings.policies_dir))

    # -- policies ---------------------------------------------------------------------------

    def load_directory(self, folder: Path) -> list[Policy]:
        """Activate every `*.md` policy in a folder (files win over earlier API uploads).

        Raises:
            ConfigError: The folder does not exist or holds no policies.
            PolicyError: A file cannot be parsed (the server does not start half-configured).
        """
        if not folder.is_dir():
            raise ConfigError(f"Policy folder {folder} does not exist.")
        files = sorted(folder.glob("*.md"))
        if not files:
            raise ConfigError(f"Policy folder {folder} holds no .md policies.")
        loaded = [load_policy(path) for path in files]
        active = self.store.active_policies()
        for policy in loaded:
            if active.get(policy.id) != policy.hash:
                self.store.activate_policy(policy)
        self._active = (0.0, {})
        return loaded

    def active_hashes(self) -> dict[str, str]:
        """Policy id -> active hash, re-read from the store at most once a second."""
        read_at, active = self._active
        if time.monotonic() - read_at > 1.0:
            active = self.store.active_policies()
            self._active = (time.monotonic(), active)
        return active

    def policy(self, policy_id: str) -> Policy:
        """The active text of a policy id: the store's active version, else a bundled one.

        Raises:
            NotFound: Neither has it.
        """
        digest = self.active_hashes().get(policy_id)
        if digest is not None:
            return self.policy_by_hash(digest)
        if policy_id in self._builtin_names:
            policy = self._builtins.get(policy_id)
            if policy is None:  # package data: parsed once per process
                policy = self._builtins[policy_id] = load_policy(policy_id)
            return policy
        raise NotFound(
            f"No policy {policy_id!r}. GET /v1/policies lists the ids this server knows; "
            "PUT /v1/policies/{id} adds one."
        )

    def policy_by_hash(self, digest: str) -> Policy:
        policy = self._parsed.get(digest)
        if policy is None:
            policy = parse_policy(self.store.policy_text(digest), source=f"store:{digest[:12]}")
            self._parsed[digest] = policy
        return policy

    def policy_ids(self) -> list[str]:
        """Every id the server can judge under, sorted."""
        return sorted(set(self.active_hashes()) | self._builtin_names)

    def put_policy(self, policy: Policy, *, activate: bool) -> bool:
        """Store a policy text (a new version unless the same text exists); True if new."""
        known = self.store.has_policy(policy.hash)
        if activate:
            self.store.activate_policy(policy)
        else:
            self.store.add_policy(policy)
        self._active = (0.0, {})
        return not known

    def activate(self, policy_id: str, ref: str) -> Policy:
        """Make a stored version (`@N`, hash prefix or version label) the active one."""
        try:
            version = self.store.policy_version(policy_id, ref)
        except MagistrateError as exc:
            raise NotFound(str(exc)) from None
        policy = self.policy_by_hash(version.hash)
        self.store.activate_policy(policy)
        self._active = (0.0, {})
        return policy

    # -- judging ----------------------------------------------------------------------------

    def items(self, raw: Sequence[ItemIn]) -> list[Item]:
        """Checked items from a request.

        Raises:
            TooLarge: More items than `max_items`.
            InputError: An item is empty, too large, binary, or has both or neither of text
                and turns (the message names the item by index).
        """
        if len(raw) > self.settings.max_items:
            raise TooLarge(
                f"{len(raw)} items in one request; this server takes at most "
                f"{self.settings.max_items}. Split the request."
            )
        items = []
        for i, entry in enumerate(raw):
            if (entry.text is None) == (entry.turns is None):
                raise InputError(f"items[{i}]: give exactly one of `text` and `turns`.")
            content = (
                entry.text
                if entry.text is not None
                else [{"role": t.role, "content": t.content} for t in entry.turns or ()]
            )
            try:
                items.append(
                    Item.of(
                        content,
                        id=entry.id,
                        max_chars=self.settings.max_chars,
                        metadata=entry.metadata,
                    )
                )
            except InputError as exc:
                raise InputError(f"items[{i}]: {exc}") from None
        return items

    def _engine_settings(self, effort: Effort) -> dict[str, Any]:
        """What every engine the service builds shares: the server's limits and recorder."""
        return {
            "effort": effort,
            "max_chars": self.settings.max_chars,
            "timeout_s": self.settings.timeout_s,
            "on_abstain": self.settings.on_abstain,
            "recorder": self.recorder,
        }

    def classifier(self, policy: Policy, mode: Mode, effort: Effort) -> Classifier:
        key = (policy.hash, mode.value, effort.value)
        clf = self._classifiers.get(key)
        if clf is None:
            clf = Classifier(policy, self.backend, mode=mode, **self._engine_settings(effort))
            self._classifiers[key] = clf
        return clf

    async def judge(
        self, items: Sequence[Item], policies: Sequence[Policy], mode: Mode, effort: Effort
    ) -> list[list[Judged]]:
        """Judge every item under every policy: `result[item][policy]`.

        Identical judgements made within the cache window come from memory. The rest go
        through the bounded queue; when it is full nothing is judged and `Overloaded` is
        raised.

        Raises:
            Overloaded: The queue in front of the backend is full.
            ConfigError: The mode needs something the backend cannot give.
        """
        if mode is Mode.SCORE and not self.backend.capabilities.label_scores:
            raise ConfigError(
                f"Score mode needs label probabilities, which {self.backend.name} cannot give; "
                'send "mode": "reason".'
            )
        out: list[list[Judged | None]] = [[None] * len(policies) for _ in items]
        todo: list[tuple[int, int, str]] = []
        for i, item in enumerate(items):
            for j, policy in enumerate(policies):
                key = f"{policy.hash}:{self.backend.name}:{mode.value}:{effort.value}:{item.hash}"
                hit = self.results.get(key)
                if hit is not None:
                    out[i][j] = Judged(hit, cached=True)
                    self.metrics.cache_hits.inc()
                else:
                    todo.append((i, j, key))
        if todo:
            with self._queued(len(todo)):
                await asyncio.gather(
                    *(self._one(items[i], policies[j], mode, effort, key, out, i, j)
                      for i, j, key in todo)
                )  # fmt: skip
        return [[j for j in row if j is not None] for row in out]

    def can_combine(self, policies: Sequence[Policy]) -> bool:
        """Whether `judge_combined` can take these policies: two or more distinct ids, and a
        backend that reads each policy's label in one pass (`label_slots`)."""
        ids = [p.id for p in policies]
        return self.backend.capabilities.label_slots and len(ids) > 1 and len(set(ids)) == len(ids)

    def combined_classifier(self, policies: Sequence[Policy], effort: Effort) -> CombinedClassifier:
        bundle = PolicyBundle.of(policies)
        key = (bundle.hash, effort.value)
        clf = self._combined.get(key)
        if clf is None:
            clf = CombinedClassifier(
                bundle, self.backend, mode=Mode.SCORE, **self._engine_settings(effort)
            )
            self._combined[key] = clf
        return clf

    async def judge_combined(
        self, items: Sequence[Item], policies: Sequence[Policy], effort: Effort
    ) -> list[list[Judged]]:
        """Judge every item under all `policies` in one prompt per item, in score mode:
        `result[item][policy]`, each policy's verdict from its own score and threshold.

        This is how thresholds chosen for policies judged together are honoured (see
        `can_combine`). Cached per item for the whole bundle; misses go through the queue,
        one slot per item.

        Raises:
            Overloaded: The queue in front of the backend is full.
        """
        clf = self.combined_classifier(policies, effort)
        prefix = f"{clf.bundle.hash}:{self.backend.name}:combined-score:{effort.value}"
        out: list[list[Judged]] = []
        todo: list[int] = []
        for i, item in enumerate(items):
            hits = [self.results.get(f"{prefix}:{p.hash}:{item.hash}") for p in policies]
            if all(h is not None for h in hits):
                out.append([Judged(h, cached=True) for h in hits if h is not None])
                self.metrics.cache_hits.inc()
            else:
                out.append([])
                todo.append(i)
        if todo:

            async def one(i: int) -> None:
                async with self._gate:
                    decisions = await clf.classify(items[i])
                for decision, policy in zip(decisions, policies, strict=True):
                    self.metrics.observe_decision(decision)
                    if decision.ok:
                        self.results.put(f"{prefix}:{policy.hash}:{items[i].hash}", decision)
                out[i] = [Judged(d, cached=False) for d in decisions]

            with self._queued(len(todo)):
                await asyncio.gather(*(one(i) for i in todo))
        return out

    @contextlib.contextmanager
    def _queued(self, units: int) -> Iterator[None]:
        """Hold `units` places in the bounded queue while the block runs.

        Raises:
            Overloaded: Not enough free places (nothing is run then).
        """
        self.admission.admit(units)
        self.metrics.queue.set(self.admission.in_use)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.admission.release(units, (time.perf_counter() - started) / units)
            self.metrics.queue.set(self.admission.in_use)

    async def _one(
        self,
        item: Item,
        policy: Policy,
        mode: Mode,
        effort: Effort,
        key: str,
        out: list[list[Judged | None]],
        i: int,
        j: int,
    ) -> None:
        clf = self.classifier(policy, mode, effort)
        async with self._gate:
            decision = await clf.classify(item)
        self.metrics.observe_decision(decision)
        if decision.ok:
            self.results.put(key, decision)
        out[i][j] = Judged(decision, cached=False)

    # -- keys -------------------------------------------------------------------------------

    def authenticate(self, secret: str | None) -> ApiKey | None:
        """The caller's key, or None when refused.

        When keys are not required, a caller without a known key (the openai client always
        sends one) is ANONYMOUS, with every scope and no rate limit.
        """
        key = self.store.api_key_for(secret) if secret else None
        if key is not None:
            return key
        return None if self.settings.keys_required else ANONYMOUS

    def check_scope(self, key: ApiKey, scope: str) -> None:
        if scope not in key.scopes and "admin" not in key.scopes:
            raise Forbidden(
                f"This API key lacks the {scope!r} scope. Create one with "
                f"`magistrate keys create NAME --scope {scope}`."
            )

    # -- health -----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str, str | None]:
        """Whether the service can take work: (ready, store state, problem)."""
        if self.draining:
            return False, "unknown", "the server is shutting down"
        try:
            self.store.count(policy_id="__readiness_probe__")
        except MagistrateError as exc:
            return False, "unreachable", str(exc)
        return True, "ok", None

    async def aclose(self) -> None:
        await self.backend.aclose()
        self.store.close()


def inline_policy(text: str) -> Policy:
    """A policy sent with the request (when the server allows it).

    Raises:
        PolicyError: It cannot be parsed.
    """
    if not text.strip():
        raise PolicyError("policy_text is empty; send the Markdown policy.")
    return parse_policy(text, source="request", default_id="inline")


__all__ = [
    "ANONYMOUS",
    "SCOPES",
    "Forbidden",
    "Judged",
    "NotFound",
    "Service",
    "TooLarge",
    "inline_policy",
]
