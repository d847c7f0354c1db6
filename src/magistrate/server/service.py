"""What the HTTP layer calls: policies, judging with back-pressure and caching, keys.

`Service` holds one backend, one store and one `Judge` per (policy texts, mode, effort,
strategy), all built on the same engine as the CLI, in bounded LRU caches. It knows nothing
about HTTP; `app.py` maps its errors onto status codes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from magistrate.backends import Backend, backend_for
from magistrate.decision import Decision
from magistrate.engine import Judge, Judgement, Strategy, judge_all
from magistrate.errors import (
    ConfigError,
    Forbidden,
    InputError,
    MagistrateError,
    NotFound,
    PolicyError,
    TooLarge,
)
from magistrate.item import Item
from magistrate.policy import (
    Policy,
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


JUDGES_KEPT = 256
"""Judges kept per process (one per policy set, mode, effort and strategy), least recently
used dropped first."""
POLICIES_KEPT = 1024
"""Parsed policy texts kept per process."""


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
        # Bounded: inline policies make a new text (and judge) per request.
        self._judges: TTLCache[Judge] = TTLCache(math.inf, JUDGES_KEPT)
        self._parsed: TTLCache[Policy] = TTLCache(math.inf, POLICIES_KEPT)
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
            self._parsed.put(digest, policy)
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
        version = self.store.policy_version(policy_id, ref)  # NotFound: 404; an outage: 503
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

    def judge_for(
        self, policies: Sequence[Policy], mode: Mode, effort: Effort, *, combine: bool = False
    ) -> Judge:
        """The service's judge for these policies (kept in a bounded LRU): several policies
        in one prompt with `combine`, else one call per policy."""
        strategy = Strategy.COMBINED if combine else Strategy.SEPARATE
        key = ":".join([*(p.hash for p in policies), mode.value, effort.value, strategy.value])
        judge = self._judges.get(key)
        if judge is None:
            judge = Judge(
                policies,
                self.backend,
                strategy=strategy,
                mode=mode,
                effort=effort,
                max_chars=self.settings.max_chars,
                timeout_s=self.settings.timeout_s,
                on_abstain=self.settings.on_abstain,
                recorder=self.recorder,
            )
            self._judges.put(key, judge)
        return judge

    async def judge(
        self,
        items: Sequence[Item],
        policies: Sequence[Policy],
        mode: Mode,
        effort: Effort,
        *,
        combine: bool = False,
    ) -> list[Judgement]:
        """Judge every item under every policy (one `Judgement` per item, in order).

        Decisions made within the cache window come from memory (`combine` keeps its own
        entries: a verdict read in a combined prompt is not one made alone). Misses go
        through the bounded queue, one place per backend call; when it is full nothing is
        judged and `Overloaded` is raised.

        Raises:
            Overloaded: The queue in front of the backend is full.
            TooLarge: The request needs more calls than the queue holds at all.
            ConfigError: The mode needs something the backend cannot give.
        """
        if mode is Mode.SCORE and not self.backend.capabilities.label_scores:
            raise ConfigError(
                f"Score mode needs label probabilities, which {self.backend.name} cannot give; "
                'send "mode": "reason".'
            )
        judge = self.judge_for(policies, mode, effort, combine=combine)
        prefix = f"{judge.strategy.value}:{self.backend.name}:{mode.value}:{effort.value}"
        if judge.combined and judge.bundle is not None:
            prefix += f":{judge.bundle.hash}"

        def cached(item: Item) -> list[Decision | None]:
            return [self.results.get(f"{prefix}:{p.hash}:{item.hash}") for p in policies]

        async def lookup(item: Item) -> list[Decision | None]:
            return cached(item)

        def keep(judgement: Judgement) -> None:
            for decision, hit in zip(judgement.decisions, judgement.cached, strict=True):
                if hit:
                    self.metrics.cache_hits.inc()
                    continue
                self.metrics.observe_decision(decision)
                if decision.ok:
                    key = f"{prefix}:{decision.policy_hash}:{judgement.item.hash}"
                    self.results.put(key, decision)

        calls = sum(judge.calls_needed(cached(item)) for item in items)
        with self._queued(calls) if calls else contextlib.nullcontext():
            return await judge_all(judge, items, lookup=lookup, on_result=keep)

    def can_combine(self, policies: Sequence[Policy]) -> bool:
        """Whether these policies can be judged in one prompt in score mode: two or more
        distinct ids, and a backend that reads each policy's label in one pass."""
        ids = [p.id for p in policies]
        return self.backend.capabilities.label_slots and len(ids) > 1 and len(set(ids)) == len(ids)

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
        """Close the store. The backend is left open: it belongs to whoever made it (the
        process-wide registry for model strings), and other users may share it."""
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
    "NotFound",
    "Service",
    "TooLarge",
    "inline_policy",
]
