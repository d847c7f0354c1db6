"""Magistrate inside your own Ray Data pipelines (needs `pip install 'magistrate[ray]'`).

`JudgeBatches` is a callable class for `Dataset.map_batches`: each actor builds one judge
(one loaded backend) from a `JudgeConfig` and runs the engine's `judge_many` over its
batches. It returns one row per input row: the any-policy answer (`flagged`, `violation`,
`flagged_by`), why a row was not judged (`problem`), and every decision as the log stores it
(`decisions`, JSON). Actors record nothing: write the decisions where you need them, or use
`magistrate batch --engine ray`, whose driver records them into the hash-chained log.

Example:
    >>> import ray
    >>> from magistrate.ray import JudgeBatches, JudgeConfig
    >>> spam = open("spam.md").read()
    >>> config = JudgeConfig(policies=(spam,), model="openai/gpt-oss-safeguard-20b",
    ...                      endpoint="vllm", mode="reason")
    >>> judged = ray.data.read_parquet("posts/").map_batches(
    ...     JudgeBatches, fn_constructor_kwargs={"config": config, "columns": {"text": "body"}},
    ...     compute=ray.data.ActorPoolStrategy(size=4), batch_size=64, batch_format="pyarrow")
"""

from __future__ import annotations

from magistrate.batch.ray import JudgeBatches, JudgeConfig, decode_decisions, split_file

__all__ = ["JudgeBatches", "JudgeConfig", "decode_decisions", "split_file"]
