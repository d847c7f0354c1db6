"""Fitted read-outs: the numbers, the artefact and its binding, the engine, leakage, the store.

Scripted backends cover the edge cases (mismatched read-outs, missing hidden states, leakage);
the tests marked `model` fit and use a read-out on the real embedded model.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.engine import Judge, judge_all
from magistrate.errors import ConfigError, NotFound, StoreError
from magistrate.evaluate.datasets import Dataset, Example
from magistrate.evaluate.runner import evaluate
from magistrate.item import Item
from magistrate.policy import Policy, parse_policy
from magistrate.readout import ReadOut, ReadOutMismatch, Target
from magistrate.readout.collect import fit_readout
from magistrate.readout.fit import C_GRID, candidate_kinds, fit_probe, operating_point
from magistrate.readout.select import choose_readouts
from magistrate.store import Store
from magistrate.verdict import ParseStatus

# -- the numbers ------------------------------------------------------------------------------


def test_targets_parse_and_refuse_nonsense() -> None:
    assert str(Target.parse("F1")) == "f1"
    assert Target.parse("precision=0.9") == Target("precision", 0.9)
    assert Target.parse("recall=1") == Target("recall", 1.0)
    for bad in ("precision", "recall=1.5", "precision=0", "accuracy=0.9", "f2"):
        with pytest.raises(ConfigError, match="A target is"):
            Target.parse(bad)


def _scores(n: int = 400, seed: int = 1) -> tuple[list[bool], list[float]]:
    rng = random.Random(seed)
    gold = [i % 4 == 0 for i in range(n)]
    scores = [min(1.0, max(0.0, rng.gauss(0.7 if g else 0.3, 0.15))) for g in gold]
    return gold, scores


def test_operating_points_reach_their_targets() -> None:
    gold, scores = _scores()
    best = operating_point(gold, scores, Target("f1"))
    strict = operating_point(gold, scores, Target("precision", 0.95))
    eager = operating_point(gold, scores, Target("recall", 0.98))
    assert strict.precision >= 0.95 and eager.recall >= 0.98
    assert eager.threshold < best.threshold < strict.threshold
    # The precision point keeps the most recall that precision allows: one step lower fails it.
    lower = [s for s in sorted(set(scores)) if s < strict.threshold][-1]
    tp = sum(1 for g, s in zip(gold, scores, strict=True) if g and s >= lower)
    fp = sum(1 for g, s in zip(gold, scores, strict=True) if not g and s >= lower)
    assert tp / (tp + fp) < 0.95
    with pytest.raises(ConfigError, match="No threshold reaches precision 1"):
        operating_point([True, False, True, False], [0.1, 0.9, 0.5, 0.6], Target("precision", 1))


def test_review_band_holds_the_share_around_the_threshold() -> None:
    gold, scores = _scores()
    point = operating_point(gold, scores, Target("f1"), review_share=0.2)
    assert point.band is not None
    low, high = point.band
    assert low <= point.threshold <= high
    inside = sum(1 for s in scores if low <= s < high) / len(scores)
    assert inside == pytest.approx(0.2, abs=0.02) and point.band_share == pytest.approx(inside)
    # What is left outside the band is decided better than everything at the same threshold.
    assert point.f1_outside_band is not None and point.f1_outside_band > point.f1
    explicit = operating_point(gold, scores, Target("f1"), band=(0.0, 1.0))
    assert explicit.band_share == 1.0 and explicit.f1_outside_band is None
    with pytest.raises(ConfigError, match="must hold the threshold"):
        operating_point(gold, scores, Target("f1"), band=(0.95, 1.0))


def test_fit_probe_ranks_a_planted_direction_out_of_fold() -> None:
    rng = np.random.default_rng(3)
    gold = [i % 3 == 0 for i in range(150)]
    hidden = rng.normal(size=(150, 32))
    hidden[:, 5] += np.where(gold, 1.5, -1.5)  # the signal lives in one direction
    zero_shot = [0.5] * 150  # an uninformative zero-shot score
    fitted = fit_probe({"final-norm@label": hidden}, zero_shot, gold, folds=5, seed=0)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(gold, fitted.oof) > 0.9
    assert len(fitted.candidates) == 2 * len(C_GRID) and fitted.kind == "final-norm@label"
    assert fitted.features in ("hidden", "hidden+score")
    # repeatable, folds fitted two at a time or one after another
    assert fitted == fit_probe({"final-norm@label": hidden}, zero_shot, gold, jobs=1)
    with pytest.raises(ConfigError, match="at least 10 violating"):
        fit_probe({"x": hidden[:30]}, zero_shot[:30], [True] * 5 + [False] * 25)


def test_fit_probe_keeps_the_state_where_the_signal_is() -> None:
    rng = np.random.default_rng(5)
    gold = [i % 4 == 0 for i in range(160)]
    noise = rng.normal(size=(160, 16))
    signal = rng.normal(size=(160, 16))
    signal[:, 2] += np.where(gold, 2.0, -2.0)
    states = {"final-norm@label": noise, "layer-3@label": signal, "layer-5@label": noise * 2}
    fitted = fit_probe(states, [0.5] * 160, gold, folds=4, seed=1, jobs=1)
    assert fitted.kind == "layer-3@label"
    # every state was compared once, then the chosen one over the whole grid
    assert [c.kind for c in fitted.candidates[:3]] == list(states)
    assert len(fitted.candidates) == 3 + 2 * len(C_GRID)
    assert {c.kind for c in fitted.candidates[3:]} == {"layer-3@label"}


def test_state_kinds_name_llama_cpp_graph_tensors() -> None:
    from magistrate.backends.llamacpp_tap import tensor_name

    assert tensor_name("final-norm@label", 28) == b"result_norm"
    assert tensor_name("layer-0@label", 28) == b"l_out-0"
    assert tensor_name("layer-27@label", 28) == b"l_out-27"
    with pytest.raises(ConfigError, match="has 28"):
        tensor_name("layer-28@label", 28)
    for bad in ("layer-x@label", "final-norm", "embeddings@label", "layer--1@label"):
        with pytest.raises(ConfigError, match="Unknown hidden-state kind"):
            tensor_name(bad, 28)


def test_candidate_kinds_sit_at_fixed_depths() -> None:
    offered = ("final-norm@label", *(f"layer-{i}@label" for i in range(28)))
    assert candidate_kinds(offered) == (
        "final-norm@label",
        "layer-12@label",
        "layer-15@label",
        "layer-18@label",
        "layer-21@label",
    )
    assert candidate_kinds(("final-norm@label",)) == ("final-norm@label",)


# -- a scripted world -------------------------------------------------------------------------

SIZE = MockBackend.feature_size


def _policy(text_extra: str = "") -> Policy:
    return parse_policy(
        "---\nid: bait\nversion: '1'\nthreshold: 0.5\n---\n# Bait\n\n## VIOLATES (1)\n"
        f"- **B1**: click bait.\n\n## SAFE (0)\n- **B0**: anything else.{text_extra}\n",
        source="bait.md",
    )


def _examples(n: int = 40) -> list[Example]:
    return [Example(f"e{i}", f"item number {i}", i % 2 == 0) for i in range(n)]


def _script(examples: list[Example]) -> list[Scripted]:
    """Zero-shot scores that know nothing; a hidden state whose first unit knows the label."""
    return [
        Scripted(
            "1",
            label_probs={"0": 0.5, "1": 0.5},
            features=(1.0 if e.gold else -1.0, 0.1 * (i % 3), 0.0, 1.0),
        )
        for i, e in enumerate(examples)
    ]


def _fit(
    policy: Policy, examples: list[Example], backend: MockBackend | None = None, **kw: object
) -> ReadOut:
    backend = backend or MockBackend(script=_script(examples), max_concurrency=1)
    data = Dataset("scripted", "memory", tuple(examples), "gold")
    result = asyncio.run(
        fit_readout(policy, data, backend, target=Target("f1"), review_share=0.2, **kw)  # type: ignore[arg-type]
    )
    return result.readout


@pytest.fixture(scope="module")
def fitted() -> ReadOut:
    return _fit(_policy(), _examples())


def test_fit_through_the_judge_binds_the_artefact(fitted: ReadOut) -> None:
    policy = _policy()
    doc = fitted.document
    assert doc.binding.policy_hash == policy.hash and doc.binding.size == SIZE
    assert doc.cv.roc_auc == 1.0 and doc.cv.zero_shot_roc_auc == 0.5
    assert doc.trained_on.items == 40 and doc.trained_on.positive == 20
    assert set(doc.trained_on.item_hashes) == {Item.of(e.text).hash for e in _examples()}
    # Tied scores (the script has few distinct states) can leave the band a little short.
    assert doc.point.band is not None and 0.1 <= (doc.point.band_share or 0) <= 0.25
    again = ReadOut.from_json(fitted.to_json())
    assert again.hash == fitted.hash
    threshold = again.point.threshold
    assert again.score([1, 0, 0, 1]) > max(0.6, threshold)
    assert again.score([-1, 0, 0, 1]) < min(0.4, threshold)
    assert doc.binding.kind == "final-norm@label"


def test_a_judge_keeps_each_state_once_and_only_states_its_backend_returns() -> None:
    policy = _policy()
    judge = Judge(policy, MockBackend(), mode="score", features="final-norm@label")
    assert judge.features == ("final-norm@label",)
    twice = Judge(policy, MockBackend(), mode="score", features=["final-norm@label"] * 2)
    assert twice.options().features == ("final-norm@label",)
    with pytest.raises(ConfigError, match="cannot return the state 'layer-3@label'"):
        Judge(policy, MockBackend(), mode="score", features=("layer-3@label",))


def test_documents_from_before_states_were_compared_keep_their_hash(fitted: ReadOut) -> None:
    data = json.loads(fitted.to_json())
    for candidate in data["cv"]["candidates"]:
        del candidate["kind"]  # what `fit` wrote before it compared states
    old = json.dumps(data, sort_keys=True, separators=(",", ":"))
    loaded = ReadOut.from_json(old)
    assert loaded.to_json() == old
    assert all(c.kind is None for c in loaded.document.cv.candidates)


def test_a_state_the_backend_cannot_return_is_refused_before_judging() -> None:
    backend = MockBackend(script=_script(_examples()), max_concurrency=1)
    with pytest.raises(ConfigError, match="cannot return the state 'layer-3@label'"):
        _fit(_policy(), _examples(), backend, kinds=("layer-3@label",))
    assert backend.prompts == []  # nothing was judged


def test_a_read_out_judges_and_is_named_on_every_decision(fitted: ReadOut) -> None:
    policy = _policy()
    script = [
        Scripted("1", label_probs={"0": 0.9, "1": 0.1}, features=(1.0, 0.0, 0.0, 1.0)),
        Scripted("1", label_probs={"0": 0.1, "1": 0.9}, features=(-1.0, 0.0, 0.0, 1.0)),
    ]
    backend = MockBackend(script=script, max_concurrency=1)
    judge = Judge(policy, backend, mode="score", readouts=[fitted])
    first, second = asyncio.run(judge_all(judge, ["a", "b"]))
    a, b = first.decisions[0], second.decisions[0]
    # The read-out overrules the zero-shot score both ways; the zero-shot probabilities stay.
    assert a.violation is True and a.verdict.score is not None and a.verdict.score > 0.6
    assert b.violation is False and b.verdict.label_probs["1"] == pytest.approx(0.9)
    assert a.options["readout"] == fitted.id and a.options["readout_sha256"] == fitted.hash
    assert all(o.features == ("final-norm@label",) for o in backend.options)
    assert a.features is None  # hidden states are kept only for a judge that asks


def test_a_missing_or_broken_hidden_state_is_never_safe(fitted: ReadOut) -> None:
    policy = _policy()
    script = [
        Scripted("0", label_probs={"0": 0.99, "1": 0.01}),
        Scripted("0", label_probs={"0": 0.99, "1": 0.01}, features=(float("nan"), 0.0, 0.0, 1.0)),
        Scripted("0", label_probs={"0": 0.99, "1": 0.01}, features=(1.0, 2.0)),
    ]
    judge = Judge(
        policy, MockBackend(script=script, max_concurrency=1), mode="score", readouts=[fitted]
    )
    decisions = [j.decisions[0] for j in asyncio.run(judge_all(judge, ["a", "b", "c"]))]
    assert [d.verdict.status for d in decisions] == [
        ParseStatus.ERROR,
        ParseStatus.MALFORMED,
        ParseStatus.MALFORMED,
    ]
    assert all(d.violation is None and d.flagged is None for d in decisions)
    assert "no hidden state" in (decisions[0].verdict.detail or "")


def test_mismatched_read_outs_are_refused(fitted: ReadOut) -> None:
    edited = _policy(" Also memes.")
    with pytest.raises(ReadOutMismatch, match="another text of it"):
        Judge(edited, MockBackend(), mode="score", readouts=[fitted])
    with pytest.raises(ReadOutMismatch, match="other weights"):
        Judge(_policy(), MockBackend("bigger-model"), mode="score", readouts=[fitted])

    class OtherTemplate(MockBackend):
        def representation(self, prompt):  # type: ignore[no-untyped-def]
            return replace(super().representation(prompt), layout="f" * 64)

    with pytest.raises(ReadOutMismatch, match="another prompt layout"):
        Judge(_policy(), OtherTemplate(), mode="score", readouts=[fitted])

    class NoStates(MockBackend):
        def representation(self, prompt):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(ReadOutMismatch, match="does not return"):
        Judge(_policy(), NoStates(), mode="score", readouts=[fitted])
    with pytest.raises(ConfigError, match="score mode"):
        Judge(_policy(), MockBackend(), mode="reason", readouts=[fitted])
    other = parse_policy(
        "---\nid: other\n---\n# Other\n\n## VIOLATES (1)\n- **O1**: x.\n", source="o.md"
    )
    with pytest.raises(ConfigError, match="score mode"):
        Judge([_policy(), other], MockBackend(), mode="score", readouts=[fitted])
    with pytest.raises(ReadOutMismatch, match="does not have"):
        Judge(other, MockBackend(), mode="score", readouts=[fitted])


def test_damaged_read_out_files_are_refused(tmp_path: Path, fitted: ReadOut) -> None:
    path = tmp_path / "r.json"
    fitted.save(path)
    assert ReadOut.load(path).hash == fitted.hash
    data = json.loads(path.read_text())
    data["coef"] = data["coef"][:2]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="must each hold 4 numbers"):
        ReadOut.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        ReadOut.load(path)
    path.write_text(json.dumps({"schema": "magistrate.eval/2"}))
    with pytest.raises(ConfigError, match=r"not a magistrate\.readout/1"):
        ReadOut.load(path)
    with pytest.raises(ConfigError, match="Cannot read"):
        ReadOut.load(tmp_path / "missing.json")


# -- leakage ----------------------------------------------------------------------------------


def test_fitting_on_the_reported_items_is_refused() -> None:
    examples = _examples()
    report = {Item.of(e.text).hash for e in examples[:3]}
    with pytest.raises(ConfigError, match="3 of the 40 labelled items are also in"):
        _fit(_policy(), examples, held_out=report)
    dropped = _fit(_policy(), examples, held_out=report, drop_overlap=True)
    assert dropped.document.trained_on.items == 37
    assert not report & dropped.trained_hashes()


def test_evaluating_a_read_out_on_its_own_training_items_is_refused(fitted: ReadOut) -> None:
    examples = _examples()
    data = Dataset("scripted", "memory", tuple(examples[:5]), "gold")
    judge = Judge(
        _policy(), MockBackend(script=_script(examples[:5])), mode="score", readouts=[fitted]
    )
    with pytest.raises(ConfigError, match="was fitted on 5 of these 5 items"):
        asyncio.run(evaluate(data, judge))


def test_eval_reports_the_zero_shot_figures_beside_the_read_out(fitted: ReadOut) -> None:
    fresh = [Example(f"n{i}", f"another item {i}", i % 2 == 0) for i in range(20)]
    script = [
        Scripted(
            "1",
            label_probs={"0": 0.3, "1": 0.7} if i % 4 < 2 else {"0": 0.7, "1": 0.3},
            features=(1.0 if e.gold else -1.0, 0.0, 0.0, 1.0),
        )
        for i, e in enumerate(fresh)
    ]
    judge = Judge(
        _policy(), MockBackend(script=script, max_concurrency=1), mode="score", readouts=[fitted]
    )
    run = asyncio.run(evaluate(Dataset("fresh", "memory", tuple(fresh), "gold"), judge)).runs[0]
    assert run.metrics.f1 == 1.0
    z = run.metrics.zero_shot
    assert z is not None and z.readout == fitted.id and z.threshold == 0.5
    assert z.f1 == pytest.approx(0.5) and z.scores is not None and z.scores.roc_auc == 0.5
    assert run.items[0].row().zero_shot_score == pytest.approx(0.7)


# -- the store and the choice -----------------------------------------------------------------


def test_the_store_keeps_read_outs_by_binding(store_url: str, fitted: ReadOut) -> None:
    policy = _policy()
    with Store(store_url) as store:
        store.readouts.add(fitted, policy)
        assert store.readouts.get(fitted.id).hash == fitted.hash
        assert [r.id for r in store.readouts.list("bait")] == [fitted.id]
        assert store.policies.versions("bait")[0].hash == policy.hash
        b = fitted.binding
        assert store.readouts.latest(b.policy_hash, b.model_sha256, b.layout).id == fitted.id  # type: ignore[union-attr]
        assert store.readouts.latest(b.policy_hash, "0" * 64, b.layout) is None
        with pytest.raises(NotFound, match="No read-out"):
            store.readouts.get("01NOSUCHREADOUT0000000000")
        with pytest.raises(ReadOutMismatch):
            store.readouts.add(fitted, _policy(" edited"))
        # auto picks the stored one in score mode, nothing in reason mode or for a bundle
        backend = MockBackend()
        assert [r.id for r in choose_readouts(None, [policy], backend, store, mode="score")] == [
            fitted.id
        ]
        assert choose_readouts(["none"], [policy], backend, store, mode="score") == []
        assert choose_readouts(["auto"], [policy], backend, store, mode="reason") == []
        assert choose_readouts(None, [policy], backend, store, mode="score", combined=True) == []
        with pytest.raises(ConfigError, match="score mode"):
            choose_readouts([fitted.id], [policy], backend, store, mode="reason")
        table = store.db.tables["readouts"]
        lowered = json.loads(fitted.to_json())
        lowered["point"]["threshold"] = lowered["point"]["band"][0]  # flag more, quietly
        with store.db.write() as conn:
            conn.execute(table.update().values(document=json.dumps(lowered)))
        with pytest.raises(StoreError, match="no longer matches"):
            store.readouts.get(fitted.id)


# -- the real embedded model ------------------------------------------------------------------

SPAM = [
    "WIN a FREE iPhone!!! Click http://bit.ly/x to claim now",
    "Congratulations, you have been selected for a $1000 Walmart gift card, reply YES",
    "URGENT: your account is suspended, verify your password at secure-login.biz",
    "Cheap meds online, no prescription needed, 80% off today only",
    "Earn $5000 a week from home, no experience, text JOB to 88888",
    "You won the lottery! Send your bank details to receive the prize",
    "Hot singles in your area want to meet you, click here",
    "FINAL NOTICE: claim your free cruise before midnight, call 0800 123 456",
    "Buy followers now! 10k Instagram followers for only $9.99",
    "Your parcel is waiting, pay the $1.99 customs fee at track-parcel.info",
    "Limited offer!!! Crypto doubling guaranteed, send 1 BTC get 2 back",
    "Free ringtones! Text TONE to 80082 now, 3 pounds per week",
    "Get rich quick with this one weird trick banks hate, sign up today",
    "Exclusive deal: designer watches 90% off, visit replica-shop.ru",
    "You have a pending refund of $349, enter your card number to receive it",
]
HAM = [
    "Are we still meeting for lunch tomorrow at noon?",
    "Thanks for the notes from yesterday's lecture, they helped a lot",
    "Can you pick up milk on your way home?",
    "The meeting moved to room 4B, see you there",
    "Happy birthday! Hope you have a wonderful day",
    "I left my umbrella at your place, I'll grab it on Friday",
    "The report is attached, let me know if anything is missing",
    "Mum says dinner is at seven, don't be late",
    "Did you see the match last night? What a goal",
    "My train is delayed by twenty minutes, sorry",
    "Could you review my pull request when you have a moment?",
    "We should book the campsite before the summer rush",
    "The cat knocked over the plant again",
    "Remember to water the tomatoes while I'm away",
    "Great job on the presentation today",
]


def _labelled(path: Path, rows: list[tuple[str, bool]], prefix: str) -> Path:
    with path.open("w") as f:
        for i, (text, spam) in enumerate(rows):
            f.write(json.dumps({"id": f"{prefix}{i}", "text": text, "label": int(spam)}) + "\n")
    return path


@pytest.mark.model
def test_the_hidden_state_is_read_in_the_score_pass(embedded_backend) -> None:
    from magistrate.completion import CompletionOptions
    from magistrate.policy import load_policy
    from magistrate.prompt import build_prompt

    backend = embedded_backend
    prompt = build_prompt(load_policy("spam"), Item.of(SPAM[0]))
    plain = CompletionOptions(max_tokens=1, constrain_label=True)
    asked = replace(plain, features=("final-norm@label", "layer-15@label"))
    first = backend.complete_sync(prompt, asked)
    backend.complete_sync(build_prompt(load_policy("spam"), Item.of(HAM[0])), plain)
    again = backend.complete_sync(prompt, asked)  # the KV cache now holds another item
    without = backend.complete_sync(prompt, plain)
    width = backend.llama.n_embd()
    assert first.features is not None and len(first.features) == 2 * width
    assert without.features is None
    # two tensors of the graph, one after the other in the features
    final = np.asarray(first.features[:width])
    assert not np.allclose(final, np.asarray(first.features[width:]))
    # The same state whatever the KV cache held before, up to llama.cpp's batch-dependent
    # rounding (the cached prefix changes how the prompt is split into batches).
    for part in (slice(0, width), slice(width, 2 * width)):
        a, b = np.asarray(first.features[part]), np.asarray(again.features[part])
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.995
    assert first.label_probs is not None and without.label_probs is not None
    assert first.label_probs["1"] == pytest.approx(without.label_probs["1"], abs=0.05)
    rep = backend.representation(prompt)
    assert rep.model_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    other = backend.representation(build_prompt(load_policy("spam"), Item.of(HAM[1])))
    assert other == rep  # the layout does not depend on the content
    assert backend.representation(build_prompt(load_policy("toxic-prompt"), Item.of("x"))) != rep
    assert rep.kinds[0] == "final-norm@label" and len(rep.kinds) == 1 + 28
    with pytest.raises(ConfigError, match="has 28"):
        backend.complete_sync(prompt, replace(plain, features=("layer-28@label",)))


@pytest.mark.model
def test_fit_classify_and_eval_with_a_read_out_on_the_embedded_model(tmp_path: Path) -> None:
    from test_cli import cli

    db = str(tmp_path / "log.db")
    train = _labelled(
        tmp_path / "train.jsonl", [(t, True) for t in SPAM] + [(t, False) for t in HAM], "t"
    )
    fit = cli(
        "fit",
        "-p",
        "spam",
        "--dataset",
        str(train),
        "--database",
        db,
        "-o",
        str(tmp_path / "ro.json"),
        "--json",
    )
    assert fit.returncode == 0, fit.stderr
    out = json.loads(fit.stdout)
    readout = out["readout"]
    assert readout["binding"]["policy_id"] == "spam" and readout["trained_on"]["items"] == 30
    assert 0.5 <= readout["cv"]["roc_auc"] <= 1.0 and readout["point"]["band"] is not None
    assert ReadOut.load(tmp_path / "ro.json").id == readout["id"]
    listed = cli("fit", "list", "--database", db, "--json")
    assert json.loads(listed.stdout.splitlines()[0])["id"] == readout["id"]

    judged = cli(
        "classify",
        "-p",
        "spam",
        "--mode",
        "score",
        "--json",
        "--database",
        db,
        "Free entry! Text WIN to 80086 for a prize",
    )
    assert judged.returncode == 0, judged.stderr
    decision = json.loads(judged.stdout)
    assert decision["options"]["readout"] == readout["id"]
    plain = cli(
        "classify",
        "-p",
        "spam",
        "--mode",
        "score",
        "--json",
        "--database",
        db,
        "--readout",
        "none",
        "Free entry! Text WIN to 80086 for a prize",
    )
    assert "readout" not in json.loads(plain.stdout)["options"]

    held = _labelled(
        tmp_path / "held.jsonl",
        [
            ("Claim your free vacation voucher now, click the link", True),
            ("See you at the gym at six", False),
        ]
        * 3,
        "h",
    )
    run = cli(
        "eval",
        "--dataset",
        str(held),
        "-p",
        "spam",
        "--database",
        db,
        "--json",
        "-o",
        str(tmp_path / "runs"),
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout)["metrics"]
    assert metrics["zero_shot"]["readout"] == readout["id"]
    leaked = cli(
        "eval",
        "--dataset",
        str(train),
        "-p",
        "spam",
        "--database",
        db,
        "-o",
        str(tmp_path / "runs"),
    )
    assert leaked.returncode == 1 and "was fitted on 30 of these 30 items" in leaked.stderr


def test_fit_refuses_the_report_part_before_loading_anything() -> None:
    from test_cli import cli

    result = cli("fit", "-p", "spam", "--dataset", "toxicchat", "--part", "report")
    assert result.returncode == 1 and "Refusing to fit on --part report" in result.stderr
    bad = cli("fit", "-p", "spam", "--dataset", "toxicchat", "--target", "precision=2")
    assert bad.returncode == 1 and "A target is" in bad.stderr


def test_band_edges_share_and_saturated_scores() -> None:
    scores = [i / 100 for i in range(100)]
    gold = [s >= 0.5 for s in scores]
    point = operating_point(gold, scores, Target("f1"), review_share=0.15)
    assert point.band_share == pytest.approx(0.15)  # 0.15 * 100 is 15 items, not 16
    # A saturated score of exactly 1 is the surest violation, never in a band below the top.
    top = [0.1] * 20 + [0.6] * 5 + [1.0] * 5
    point = operating_point([False] * 20 + [True] * 10, top, Target("f1"), review_share=0.2)
    assert point.band is not None and point.band[1] <= 1.0
    from magistrate.readout.artefact import TOP, in_band

    assert not in_band(point.band, 1.0)
    assert in_band((0.2, TOP), 1.0) and in_band((0.2, 1.0), 1.0) and not in_band((0.2, 0.5), 0.5)
