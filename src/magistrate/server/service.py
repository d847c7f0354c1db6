"""What the HTTP routes call: policies, judging with back-pressure and caching, keys.

`Service` holds one backend, one store and one `Judge` per (policy texts, mode, effort,
strategy), all built on the same engine as the CLI, in bounded LRU caches. It knows nothing
about HTTP: it raises errors from `magistrate.errors`, which the app maps onto status codes
through one table. Every call that touches the database runs in a worker thread
(`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy, parse_policy
from magistrate.prompt import Effort, Mode
from magistrate.readout.artefact import ReadOut
from magistrate.readout.select import choose_readouts
from magistrate.server.batches import BatchJobs
from magistrate.server.catalog import PolicyCatalog, policy_size
from magistrate.server.idempotency import Idempotency
from magistrate.server.limits import Admission, RateLimiter, TTLCache, json_size
from magistrate.server.metrics import Metrics
from magistrate.server.moderation import moderation_result, moderation_texts
from magistrate.server.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    DecisionOut,
    ItemIn,
    ModerationRequest,
    ModerationResponse,
    ServerSettings,
)
from magistrate.store import DecisionFilter, Recorder, Store, StoredDecision
from magistrate.store.checkpoints import Checkpoint, read_checkpoint
from magistrate.store.keys import SCOPES
from magistrate.store.store import ApiKey

ANONYMOUS = ApiKey(
    id="anonymous",
    name="anonymous",
    prefix="",
    scopes=("admin", "classify"),
    created_at="",
)
"""The caller when the server does not require keys (loopback by default)."""

JUDGES_KEPT = 256
"""Judges kept per process (one per policy set, mode, effort and strategy), least recently
used dropped first."""
JUDGES_MAX_BYTES = 128 * 1024 * 1024
"""The same, by the size of their policies (a judge of inline policies holds their texts)."""


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
        self.results: TTLCache[Decision] = TTLCache(
            settings.cache_ttl_s,
            settings.cache_entries,
            max_bytes=settings.cache_max_bytes,
            size_of=decision_size,
        )
        self.draining = False
        self.catalog = PolicyCatalog(self.store)
        self.idempotency = Idempotency()
        self.batches = BatchJobs(settings, self.store, self.backend)
        # Bounded: inline policies make a new text (and judge) per request.
        self._judges: TTLCache[Judge] = TTLCache(
            math.inf,
            JUDGES_KEPT,
            max_bytes=JUDGES_MAX_BYTES,
            size_of=lambda judge: 2 * sum(policy_size(p) for p in judge.policies),
        )
        if settings.policies_dir:
            self.catalog.load_directory(Path(settings.policies_dir))

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

    async def judge_for(
        self, policies: Sequence[Policy], mode: Mode, effort: Effort, *, combine: bool = False
    ) -> Judge:
        """The service's judge for these policies (kept in a bounded LRU): several policies
        in one prompt with `combine`, else one call per policy, each with the fitted
        read-out the settings choose (looked up in a worker thread when the judge is made)."""
        strategy = Strategy.COMBINED if combine else Strategy.SEPARATE
        key = ":".join([*(p.hash for p in policies), mode.value, effort.value, strategy.value])
        judge = self._judges.get(key)
        if judge is None:
            readouts = await asyncio.to_thread(self._readouts_for, policies, mode, combine)
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
                readouts=readouts,
            )
            self._judges.put(key, judge)
        return judge

    def _readouts_for(self, policies: Sequence[Policy], mode: Mode, combine: bool) -> list[ReadOut]:
        """The configured read-outs that bind to these policies (explicit ones for other
        policies are simply not theirs). Reason mode and combined prompts use none: a
        read-out judges one policy's prompt in score mode."""
        if mode is not Mode.SCORE or combine:
            return []
        found = choose_readouts(
            self.settings.readouts, policies, self.backend, self.store, mode=mode, combined=combine
        )
        ids = {p.id for p in policies}
        return [r for r in found if r.binding.policy_id in ids]

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
        self.check_mode(mode)
        judge = await self.judge_for(policies, mode, effort, combine=combine)
        prefix = f"{judge.strategy.value}:{self.backend.name}:{mode.value}:{effort.value}"
        if judge.readouts:  # a verdict made by a read-out is cached under that read-out
            prefix += ":" + ",".join(sorted(r.hash for r in judge.readouts.values()))
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

    # -- requests ---------------------------------------------------------------------------

    async def classify(
        self, body: ClassifyRequest, caller: ApiKey, idempotency_key: str | None = None
    ) -> tuple[ClassifyResponse, bool]:
        """Judge a classify request; with an idempotency key (the body's or the header's),
        a retry gets the first answer back. Returns the response and whether it was replayed.

        Raises:
            Conflict: The idempotency key was used with another body, or is still running.
        """
        key = body.idempotency_key or idempotency_key
        if key is None:
            return await self._classify(body), False
        digest = hashlib.sha256(
            body.model_dump_json(exclude={"idempotency_key"}).encode()
        ).hexdigest()

        async def make() -> dict[str, object]:
            return (await self._classify(body)).model_dump(mode="json")

        answer, replayed = await self.idempotency.run(caller.id, key, digest, make)
        return ClassifyResponse.model_validate(answer), replayed

    async def _classify(self, body: ClassifyRequest) -> ClassifyResponse:
        policies = await self.policies_for(body)
        items = await asyncio.to_thread(self.items, body.items)  # checks and hashes
        mode = body.mode or self.settings.mode
        effort = body.effort or self.settings.effort
        judged = await self.judge(items, policies, mode, effort)
        decisions = [
            DecisionOut.of(
                decision,
                judgement.index,
                cached=cached,
                reasoning=body.include_reasoning,
                item_id=judgement.item.id,
            )
            for judgement in judged
            for decision, cached in zip(judgement.decisions, judgement.cached, strict=True)
        ]
        return ClassifyResponse(
            request_id=new_ulid(), backend=self.backend.name, decisions=decisions
        )

    async def policies_for(self, body: ClassifyRequest) -> list[Policy]:
        """The policies a classify request names, or its inline policy (see `resolve`)."""
        return await self.resolve(body.policies, body.policy_text)

    async def resolve(self, ids: Sequence[str], policy_text: str | None) -> list[Policy]:
        """The policies a request names by id (their active text), or its inline policy.

        Raises:
            Forbidden: An inline policy on a server that does not take them.
            InputError: Both or neither of ids and an inline text, or a repeated id.
            TooLarge: More policies than `max_policies`.
            NotFound: A policy id the server does not know.
        """
        if policy_text is not None:
            if not self.settings.allow_inline_policies:
                raise Forbidden(
                    "This server does not take inline policies; name a policy id it knows, "
                    "or start it with --allow-inline-policies."
                )
            if ids:
                raise InputError("Send either `policies` or `policy_text`, not both.")
            return [await asyncio.to_thread(inline_policy, policy_text)]
        if not ids:
            raise InputError("Name at least one policy id in `policies`.")
        if len(ids) > self.settings.max_policies:
            raise TooLarge(
                f"{len(ids)} policies in one request; this server takes at most "
                f"{self.settings.max_policies}."
            )
        if len(set(ids)) != len(ids):
            raise InputError("`policies` names a policy twice.")
        return [await self.catalog.policy(pid) for pid in ids]

    def check_mode(self, mode: Mode) -> None:
        """Raises ConfigError when the backend cannot run `mode`."""
        if mode is Mode.SCORE and not self.backend.capabilities.label_scores:
            raise ConfigError(
                f"Score mode needs label probabilities, which {self.backend.name} cannot give; "
                'send "mode": "reason".'
            )

    async def moderate(self, body: ModerationRequest) -> ModerationResponse:
        """The OpenAI Moderation API over the configured categories (policies).

        On a backend that reads several labels in one pass (the embedded model) all the
        categories are judged in one prompt per item, in score mode, each against its own
        threshold; elsewhere each category is judged on its own.

        Raises:
            Unavailable: Some category reached no verdict (see `moderation_result`).
        """
        texts = moderation_texts(body)
        if not texts:
            raise InputError("`input` is empty; send a string or a non-empty array.")
        items = await asyncio.to_thread(self.items, [ItemIn(text=t) for t in texts])
        categories = self.settings.moderation_categories
        policies = [await self.catalog.policy(pid) for pid in categories.values()]
        mode = Mode.SCORE if self.backend.capabilities.label_scores else Mode.REASON
        combine = self.can_combine(policies)
        judged = await self.judge(items, policies, mode, self.settings.effort, combine=combine)
        return ModerationResponse(
            id=f"modr-{new_ulid()}",
            model=body.model or self.backend.name,
            results=[moderation_result(categories, judgement) for judgement in judged],
        )

    # -- decisions ---------------------------------------------------------------------------

    async def decisions(self, where: DecisionFilter, limit: int) -> list[StoredDecision]:
        """Recorded decisions, newest first."""
        return await asyncio.to_thread(self.store.decisions, where, limit=limit)

    async def decision(self, decision_id: str) -> StoredDecision:
        """One recorded decision by id or unique prefix.

        Raises:
            NotFound: No such decision (404); an outage is `StoreUnavailable` (503).
        """
        return await asyncio.to_thread(self.store.decision, decision_id)

    async def checkpoint(self) -> Checkpoint:
        """The signed checkpoint this server publishes.

        Raises:
            NotFound: None is configured, or its file is missing.
            Unavailable: The file is not a checkpoint.
        """
        where = self.settings.checkpoint_file
        if where is None:
            raise NotFound(
                "This server publishes no checkpoint; start it with --checkpoint-file FILE "
                "(what `magistrate logs checkpoint -o FILE` writes)."
            )
        try:
            text = await asyncio.to_thread(Path(where).read_bytes)
        except OSError:
            raise NotFound("No checkpoint has been written yet.") from None
        try:
            return read_checkpoint(text)
        except InputError:
            raise Unavailable(
                "The published checkpoint file cannot be read.", code="checkpoint_unreadable"
            ) from None

    # -- keys -------------------------------------------------------------------------------

    async def authenticate(
        self, secret: str | None, scope: str, *, known: ApiKey | None = None
    ) -> ApiKey:
        """The caller's key, checked for `scope` and its rate.

        Args:
            secret: The bearer secret sent, if any.
            scope: What the route needs (`classify` or `admin`).
            known: The key `identify` already found for this request (the `RequireKey`
                middleware's), so it is not looked up twice.

        Raises:
            Unauthorized: No key where one is needed, or an unknown or revoked one.
            Forbidden: The key lacks the scope.
            RateLimited: The key is over its request rate.
        """
        key = known or await self.identify(secret)
        self.check_scope(key, scope)
        if key.id != ANONYMOUS.id:
            wait = self.rate.check(key.id, key.rate_per_minute)
            if wait:
                self.metrics.rejected.labels("rate").inc()
                raise RateLimited(
                    "This API key is over its request rate; retry after the Retry-After delay.",
                    retry_after=wait,
                )
        return key

    async def identify(self, secret: str | None) -> ApiKey:
        """The caller's live key, scopes and rate not checked yet.

        When keys are not required, a caller without a known key (the openai client always
        sends one) is ANONYMOUS, with every scope and no rate limit.

        Raises:
            Unauthorized: No key where one is needed, or an unknown or revoked one.
        """
        key = None
        if secret is not None:
            key = await asyncio.to_thread(self.store.api_key_for, secret)
        if key is None and not self.settings.keys_required:
            key = ANONYMOUS
        if key is None:
            self.metrics.rejected.labels("auth").inc()
            raise Unauthorized(
                "Send an API key as `Authorization: Bearer mg_...` (create one with "
                "`magistrate keys create NAME`)."
                if secret is None
                else "This API key is unknown or revoked."
            )
        return key

    def check_scope(self, key: ApiKey, scope: str) -> None:
        if scope not in key.scopes and "admin" not in key.scopes:
            raise Forbidden(
                f"This API key lacks the {scope!r} scope. Create one with "
                f"`magistrate keys create NAME --scope {scope}`."
            )

    async def create_key(
        self, name: str, scopes: Sequence[str], rate_per_minute: int | None
    ) -> tuple[ApiKey, str]:
        """A new API key and its secret (shown once, never stored)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise InputError(
                f"Scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}."
            )
        return await asyncio.to_thread(
            self.store.create_api_key, name, scopes, rate_per_minute=rate_per_minute
        )

    async def keys(self, include_revoked: bool) -> list[ApiKey]:
        """Every API key's record (never a secret)."""
        return await asyncio.to_thread(self.store.api_keys, include_revoked=include_revoked)

    async def revoke_key(self, name_or_id: str) -> ApiKey:
        """Revoke a key by name or id.

        Raises:
            NotFound: No live key has that name or id.
        """
        return await asyncio.to_thread(self.store.revoke_api_key, name_or_id)

    # -- health -----------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, str, str | None]:
        """Whether the service can take work: (ready, store state, problem)."""
        if self.draining:
            return False, "unknown", "the server is shutting down"
        try:
            await asyncio.to_thread(self.store.count, policy_id="__readiness_probe__")
        except MagistrateError as exc:
            return False, "unreachable", str(exc)
        return True, "ok", None

    async def aclose(self) -> None:
        """Stop the batch jobs (they resume at the next start), then close the store. The
        backend is left open: it belongs to whoever made it (the process-wide registry for
        model strings), and other users may share it."""
        await self.batches.aclose()
        self.store.close()


def decision_size(decision: Decision) -> int:
    """A cached decision's memory, roughly: its texts and metadata plus a fixed part."""
    v = decision.verdict
    texts = (v.rationale, v.answer, decision.reasoning, decision.error, v.detail)
    return 2048 + sum(len(t) for t in texts if t) + json_size(dict(decision.metadata))


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
    "JUDGES_KEPT",
    "JUDGES_MAX_BYTES",
    "SCOPES",
    "Service",
    "decision_size",
    "inline_policy",
]
