"""Searches on text rank language models as their papers do, by validation perplexity: the
candidates' objective is the mean log-likelihood per token of the validation text
(``valid_loglik``, ``-valid_loss``; the higher, the lower the perplexity), not the next word's
accuracy: here in this process (Ray's evaluator actors score with the same evaluators), and as
Tune trials in tests/test_tune.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import tiny_job
from fixtures import FIXTURES

from raynas.data import DATASETS, search_objective
from raynas.runs import run_search
from raynas.runs.common import score_text
from raynas.runs.jobs import parse_job
from raynas.tracking import ResultsStore
from raynas.types import Architecture, EvalResult


def text_search(tmp_path: Path) -> dict:
    """A random search with weight sharing over 2-node recurrent cells on a tiny PTB."""
    job = tiny_job(tmp_path, train={"epochs": 1})
    job.update(
        space={"name": "darts_rnn", "channels": 8, "nodes": 2},
        strategy={"name": "random_ws", "evaluations": 6},
        evaluator={"name": "supernet", "bn_batches": 0},
        data={"name": "ptb", "path": str(FIXTURES["ptb"](tmp_path / "data")), "bptt": 4, "batch_size": 2},
    )
    return job


@pytest.mark.parametrize("name", sorted(DATASETS.names()))
def test_text_is_ranked_by_log_likelihood_and_images_by_accuracy(name: str) -> None:
    tokens = (DATASETS.entry(name).traits or {}).get("tokens")
    assert search_objective(name) == ("valid_loglik" if tokens else "valid_acc")


def test_a_sampling_search_on_text_answers_the_candidate_of_lowest_perplexity(tmp_path: Path) -> None:
    result = run_search(parse_job(text_search(tmp_path)), echo=lambda _: None)
    rows = ResultsStore(tmp_path / "runs" / "results").read_table().to_pylist()
    assert len(rows) == 6 and {row["objective"] for row in rows} == {"valid_loglik"}
    for row in rows:
        metrics = dict(row["metrics"])
        assert row["score"] == metrics["valid_loglik"] == pytest.approx(-metrics["valid_loss"])
        assert math.exp(-metrics["valid_loglik"]) == pytest.approx(metrics["valid_ppl"], rel=1e-9)
    lowest = min(rows, key=lambda row: dict(row["metrics"])["valid_ppl"])
    assert result.architecture == Architecture.from_json(lowest["architecture"])


def test_a_language_models_score_is_shown_with_its_perplexity() -> None:
    result = EvalResult(architecture=None, metrics={"valid_loglik": -math.log(91.5)},  # type: ignore[arg-type]
                        objective="valid_loglik")
    assert score_text(result) == "-4.516 (perplexity 91.5)"
    assert score_text(EvalResult(architecture=None, metrics={"valid_acc": 0.5})) == "50.00%"  # type: ignore[arg-type]
