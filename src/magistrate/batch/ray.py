"""Batch jobs on Ray Data: the same judge in a pool of actors, one writer for the log.

The plan: `ray.data.read_binary_files` (one row per input file, read where Ray schedules it)
-> `flat_map(split_file)` (rows of each file, parsed by the same readers as the local engine,
so a malformed line becomes a problem row, never a failed block) -> `map_batches(JudgeBatches,
compute=ActorPoolStrategy(size=N))` (each actor holds one loaded judge and runs
`judge_many` over its batches) -> the driver, which iterates the results in input order
(`preserve_order`) and does what the local engine does with them: numbers the rows, looks up
the job's own and cached decisions, records new decisions into the hash-chained log in one
sequential step per commit (actors never write the log), writes the output parts and the
manifest. Resuming uses the job's manifest: the driver skips the committed rows, and the
actors are told which contents already have decisions, so they make no calls for them.

`JudgeBatches` is public: put Magistrate into your own Ray pipeline with
`ds.map_batches(JudgeBatches, fn_constructor_kwargs={"config": JudgeConfig(...)}, ...)`.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from magistrate.batch.inputs import Columns, Row, Source, make_row, records
from magistrate.decision import Decision
from magistrate.engine import Judge, Judgement, judge_all
from magistrate.errors import ConfigError, MissingDependency
from magistrate.item import DEFAULT_MAX_CHARS, Item
from magistrate.policy import parse_policy
from magistrate.store.records import canonical_json, decision_row, stored_decision

RAY_INSTALL = "pip install 'magistrate[ray]'"


def ray_module() -> Any:
    """`ray` with Ray Data, or an error that names the install command."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependency(f"--engine ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a local instance (None); quiet, without
    the dashboard, and with this process's environment for the workers it starts."""
    ray = ray_module()
    if ray.is_initialized():
        return
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        ignore_reinit_error=True,
    )


@dataclass(frozen=True)
class JudgeConfig:
    """Everything an actor needs to build the same judge as the driver (picklable).

    Policies travel as their exact texts, so an actor's policy hashes are the driver's.
    """

    policies: tuple[str, ...]
    model: str
    policy_ids: tuple[str, ...] = ()
    """The ids the driver gave the policies (a file without an `id` takes its file name's):
    an actor parsing the bare text must give them the same ids."""
    base_url: str | None = None
    endpoint: str | None = None
    strategy: str = "combined"
    mode: str = "reason"
    effort: str = "medium"
    max_chars: int = DEFAULT_MAX_CHARS
    timeout_s: float | None = None
    fallback: bool = True
    calibrated: bool = True
    max_tokens: int | None = None
    concurrency: int | None = None
    on_abstain: str = "error"

    @classmethod
    def of(
        cls, judge: Judge, model: str, *, base_url: str | None = None, endpoint: str | None = None
    ) -> JudgeConfig:
        """The config of an existing judge, reached by `model` (and `base_url`/`endpoint`)."""
        return cls(
            policies=tuple(p.text for p in judge.policies),
            model=model,
            policy_ids=tuple(p.id for p in judge.policies),
            base_url=base_url,
            endpoint=endpoint,
            strategy=judge.strategy.value,
            mode=judge.mode.value,
            effort=judge.effort.value,
            max_chars=judge.max_chars,
            timeout_s=judge.timeout_s,
            fallback=judge.fallback,
            calibrated=judge.calibrated,
            max_tokens=judge.max_tokens,
            concurrency=judge.concurrency,
            on_abstain=judge.on_abstain.value,
        )

    def build(self) -> Judge:
        from magistrate.backends import backend_for

        backend = backend_for(self.model, base_url=self.base_url, endpoint=self.endpoint)
        options = asdict(self)
        for name in ("policies", "model", "base_url", "endpoint", "policy_ids"):
            options.pop(name)
        ids = self.policy_ids or tuple(f"policy-{n + 1}" for n in range(len(self.policies)))
        policies = [
            parse_policy(text, source=f"policy {pid}", default_id=pid)
            for text, pid in zip(self.policies, ids, strict=True)
        ]
        return Judge(policies, backend, **options)


def split_file(row: Mapping[str, Any], formats: Mapping[str, str]) -> list[dict[str, Any]]:
    """`flat_map` step: one input file (`path`, `bytes`) -> one row per record, each
    `{"path", "line", "record" (JSON text or None), "problem" (or None)}`."""
    path = str(row["path"])
    data = bytes(row["bytes"])
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    out = []
    for line, record, problem in records(io.BytesIO(data), formats[_key(path)], where=path):
        text = None if record is None else json.dumps(record, default=str)  # ASCII: safe
        out.append({"path": path, "line": line, "record": text, "problem": problem})
    return out


def _key(path: str) -> str:
    return str(Path(path.removeprefix("file://")).resolve())


class JudgeBatches:
    """The callable class for `Dataset.map_batches`: one loaded judge per actor.

    Input rows: either the rows `split_file` makes (`path`, `line`, `record`, `problem`), or
    any rows with a content column (`columns.text`, or the usual names) and optionally an
    id column. Output rows, one per input row: `path`, `line`, `item_id`, `item_hash`,
    `problem` (why it was not judged), `content`, `skipped` (its decisions were known before,
    so no call was made), `flagged`, `violation`, `flagged_by` (the any-policy answer) and
    `decisions` (a JSON list, one decision row per policy, as the log stores them).

    Args:
        config: The judge to build (`JudgeConfig`).
        columns: Where the content and the id are (`text`, `id`).
        known: Content hashes whose decisions the driver already has (resume and cache):
            no call is made for them.
    """

    def __init__(
        self,
        config: JudgeConfig,
        columns: Mapping[str, str | None] | None = None,
        known: Iterable[str] = (),
    ) -> None:
        self.judge = config.build()
        self.columns = Columns(**dict(columns or {}))
        self.known = frozenset(known)
        self.loop = asyncio.new_event_loop()  # one loop per actor, so clients stay warm

    def __call__(self, batch: Any) -> Any:
        rows = [self._row(r) for r in batch.to_pylist()]
        todo = [r.item for r in rows if r.item is not None and r.item.hash not in self.known]
        judged = self.loop.run_until_complete(
            judge_all(self.judge, todo, share_identical=True) if todo else _nothing()
        )
        by_hash = {j.item.hash: j for j in judged}
        out: dict[str, list[Any]] = {name: [] for name in _OUTPUT}
        for row in rows:
            item = row.item
            found = by_hash.get(item.hash) if item is not None else None
            values = {
                "path": row.source,
                "line": row.line,
                "item_id": row.id,
                "item_hash": item.hash if item is not None else None,
                "problem": row.problem,
                "content": item.text if item is not None else None,
                "skipped": item is not None and found is None,
                "flagged": found.flagged if found else None,
                "violation": found.violation if found else None,
                "flagged_by": list(found.flagged_by) if found else [],
                "decisions": _encode(found.decisions) if found else None,
            }
            for name, value in values.items():
                out[name].append(value)
        return _table(out)

    def _row(self, record: Mapping[str, Any]) -> Row:
        if "record" in record and "path" in record:  # split_file's rows
            path = str(record["path"])
            source = Source(path, "jsonl")
            raw = record["record"]
            parsed = None if raw is None else json.loads(raw)
            line = int(record["line"])
            problem = record.get("problem")
        else:  # a user's own rows
            source, parsed, problem = Source("ray", "rows"), dict(record), None
            line = 0
        return make_row(
            -1, source, line, parsed, problem, self.columns, max_chars=self.judge.max_chars
        )

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.close()


_OUTPUT = (
    "path", "line", "item_id", "item_hash", "problem", "content", "skipped", "flagged",
    "violation", "flagged_by", "decisions",
)  # fmt: skip


def _table(columns: Mapping[str, list[Any]]) -> Any:
    """The actor's output as an Arrow table with fixed types (a batch whose column is all
    None must not get a type other batches do not share)."""
    import pyarrow as pa

    types = {
        "path": pa.string(), "line": pa.int64(), "item_id": pa.string(),
        "item_hash": pa.string(), "problem": pa.string(), "content": pa.string(),
        "skipped": pa.bool_(), "flagged": pa.bool_(), "violation": pa.bool_(),
        "flagged_by": pa.list_(pa.string()), "decisions": pa.string(),
    }  # fmt: skip
    schema = pa.schema([(name, types[name]) for name in _OUTPUT])
    return pa.Table.from_pydict(dict(columns), schema=schema)


async def _nothing() -> list[Judgement]:
    return []


def _encode(decisions: Iterable[Decision]) -> str:
    return canonical_json([decision_row(d, content=None) for d in decisions])


def decode_decisions(text: str) -> list[Decision]:
    """The decisions `JudgeBatches` returned in its `decisions` column."""
    filler = {"seq": 0, "prev_hash": "", "row_hash": ""}
    return [stored_decision({**row, **filler}).decision for row in json.loads(text)]


def build_dataset(
    sources: list[Source],
    config: JudgeConfig,
    columns: Columns,
    *,
    actors: int,
    actor_cpus: float,
    batch_rows: int,
    known: Iterable[str],
) -> Any:
    """The job's Ray Data plan, ending in the actor pool (the driver iterates it)."""
    ray = ray_module()
    if any(s.path == "-" for s in sources):
        raise ConfigError("--engine ray reads files; stdin ('-') works with the local engine.")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    paths = [str(Path(s.path).resolve()) for s in sources]
    formats = {p: s.format for p, s in zip(paths, sources, strict=True)}
    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.flat_map(split_file, fn_kwargs={"formats": formats})
    # A file's rows come out as one block, and one block goes to one actor: cut them into
    # blocks of one batch each (streaming, order kept) so every actor of the pool gets work.
    ds = ds.repartition(target_num_rows_per_block=batch_rows)
    return ds.map_batches(
        JudgeBatches,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={
            "config": config,
            "columns": {"text": columns.text, "id": columns.id},
            "known": frozenset(known),
        },
        batch_size=batch_rows,
        batch_format="pyarrow",
        num_cpus=actor_cpus,
    )


def result_row(
    number: int, values: Mapping[str, Any], sources: Mapping[str, Source]
) -> tuple[Row, list[Decision] | None]:
    """A driver-side `Row` (numbered in input order) and the actor's new decisions (None
    when the actor skipped a known content, or the row has a problem)."""
    source = sources[_key(str(values["path"]))]
    item = None
    if values["problem"] is None:
        item = Item(text=values["content"], id=values["item_id"])
        if item.hash != values["item_hash"]:  # pragma: no cover - a transport bug
            raise ConfigError(f"Row {number}: the content changed on its way from the actor.")
    row = Row(number, source.path, int(values["line"]), values["item_id"], item, values["problem"])
    made = decode_decisions(values["decisions"]) if values["decisions"] else None
    return row, made
