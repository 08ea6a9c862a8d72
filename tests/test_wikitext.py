"""WikiText-2: the loader on files in the release's format (and AWD-LSTM's renamed ones), and the
DARTS paper's transfer of its PTB cell to it (jobs/transfer_darts_rnn_wikitext2.yaml)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import mlflow_store

from raynas.data import DATASETS
from raynas.data.wikitext import WikiText2Config
from raynas.errors import ConfigError, DataError
from raynas.spaces import SPACES
from raynas.spaces.darts_rnn import PUBLISHED
from raynas.types import DatasetInfo
from tests.fixtures import WIKITEXT2_TEST, WIKITEXT2_TRAIN, WIKITEXT2_VALID, write_wikitext2

JOB = Path(__file__).parents[1] / "jobs" / "transfer_darts_rnn_wikitext2.yaml"


def corpus_words(text: str) -> list[str]:
    """What rnn/data.py's ``Corpus.tokenize`` reads: each line's words, then ``<eos>``."""
    return [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]


@pytest.mark.parametrize("renamed", [False, True], ids=["release", "getdata"])
def test_wikitext2_is_read_as_the_darts_corpus_reads_it(tmp_path: Path, renamed: bool) -> None:
    folder = write_wikitext2(tmp_path / "wikitext-2", renamed=renamed)
    data = DATASETS.create("wikitext2", WikiText2Config(path=str(folder), bptt=2))
    words = corpus_words(WIKITEXT2_TRAIN)
    assert words[:3] == ["<eos>", "=", "Valkyria"] and len(words) == 15  # an empty line is one <eos>
    vocabulary = list(dict.fromkeys(words))  # order of first appearance (data.py's Dictionary)
    assert list(data.vocabulary) == vocabulary and data.info.num_classes == 10
    assert data.info.name == "wikitext2" and data.info.image_size == 2
    assert data.train_tokens.tolist() == [vocabulary.index(w) for w in words]
    valid = [vocabulary[i] for i in data.encode("valid").tolist()]
    expected = [w if w in vocabulary else "<unk>" for w in corpus_words(WIKITEXT2_VALID)]
    assert valid == expected and "<unk>" in valid  # "Homarus" is not in the training text
    test = [vocabulary[i] for i in data.test_set().tokens.tolist()]
    assert test == [w if w in vocabulary else "<unk>" for w in corpus_words(WIKITEXT2_TEST)]


def test_missing_wikitext2_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"wiki\.train\.tokens' is missing \(expected wiki\.train\.tokens, "):
        DATASETS.create("wikitext2", WikiText2Config(path=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"data\.path.*wiki\.train\.tokens"):
        WikiText2Config()


def test_the_transferred_cell_has_the_paper_s_parameter_count() -> None:
    """rnn/model.py with DARTS_V2's cell at the paper's WikiText-2 size, by hand: the release's
    33,278 words x 700 units of embedding (the decoder's weight is tied to it), the decoder's
    bias, W0 (700 + 700) x 1400 and eight W_i of 700 x 1400. The DARTS paper's Table 3: 33M."""
    vocabulary, n = 33_278, 700
    by_hand = vocabulary * n + vocabulary + (n + n) * 2 * n + 8 * n * 2 * n
    assert by_hand == 33_127_878 and round(by_hand / 1e6) == 33
    info = DatasetInfo("wikitext2", 1, vocabulary, 35)
    model = SPACES.create("darts_rnn").build(PUBLISHED["DARTS_V2"], info, channels=n)
    assert sum(p.numel() for p in model.parameters()) == by_hand


def test_the_transfer_job_trains_the_darts_cell_on_wikitext2(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    from raynas.cli import main
    from raynas.config import load_yaml

    raw = load_yaml(JOB, [])
    assert raw["retrain"]["channels"] == 700 and raw["space"]["dropouth"] == 0.15
    assert raw["architecture"] == "DARTS_V2" and raw["data"]["name"] == "wikitext2"
    folder = write_wikitext2(tmp_path / "wikitext-2")
    uri = mlflow_store(tmp_path)
    assert main([
        "train", str(JOB), "--set", f"data.path={folder}", "--set", "data.bptt=2",
        "--set", "data.batch_size=2", "--set", "retrain.valid_streams=2",  # 9 validation tokens
        "--set", "retrain.epochs=1", "--set", "retrain.channels=8", "--set", "execution.backend=local",
        "--set", f"tracking.tracking_uri={uri}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ]) == 0
    out = capsys.readouterr().out
    assert "on wikitext2" in out
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["retrain.channels"] == "8"
    assert run.data.params["data.name"] == "wikitext2"
    metrics = run.data.metrics  # rnn/train.py's scores: validation text (ASGD's trigger) and test text
    assert metrics["asgd"] == 0 and metrics["valid_ppl"] == pytest.approx(math.exp(metrics["valid_loss"]))
    assert metrics["test_ppl"] == pytest.approx(math.exp(metrics["test_loss"]))
    # One epoch: its network is the one of the lowest validation loss, the one tested and kept.
    assert metrics["best_epoch"] == 1 and metrics["best_test_ppl"] == metrics["test_ppl"]
    assert f"test perplexity {metrics['best_test_ppl']:.2f} (the network of the lowest validation " \
           "loss, epoch 1)" in out
