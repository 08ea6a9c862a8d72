"""Every job file in jobs/ is a valid config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import mlflow_store

from raynas.runs.jobs import load_job

# Search jobs; retrain_*.yaml and transfer_*.yaml are retraining jobs (tests/test_retrain.py
# validates them), layer_count_*.yaml studies (tests/test_layer_count_study.py).
JOBS = sorted(
    p for p in (Path(__file__).parents[1] / "jobs").glob("*.yaml")
    if not p.name.startswith(("retrain_", "transfer_", "layer_count_"))
)


def test_there_are_jobs() -> None:
    assert any(p.name == "quickstart.yaml" for p in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path: Path) -> None:
    config = load_job(path)
    assert config.name and config.train.epochs >= 1


QUICK_JOBS = [p for p in JOBS if p.name.endswith("quickstart.yaml")]
SHRINK_SPACE = {
    "auto_deeplab": ["space.channels=2", "space.layers=2", "space.blocks=2"],
    "darts_rnn": ["space.channels=8", "space.nodes=2"],
    "darts": ["space.channels=4", "space.layers=3", "space.nodes=2"],
    "enas_macro": ["space.channels=4", "space.layers=3"],
    "enas_micro": ["space.channels=4", "space.layers=1", "space.nodes=2"],
    "enas_rnn": ["space.channels=8", "space.nodes=3"],
    "nb201": ["space.channels=4", "space.cells_per_stage=1"],
    "autokeras": ["space.seed_width=4"],
    "fbnet": ["space.stage_depths=[1,1,1,1]"],
    "convnext": ["space.depth_choices=[[1],[1],[1]]", "space.width_choices=[[4],[8],[8,16]]"],
    "xd": ["space.channels=4", "space.layers=3", "space.depth_choices=[1]"],
    "nexception": ["space.depth_choices=[1]", "space.widths=[4,8,8,8,8,8,8]"],
    "stacked_bnas": ["space.channels=4", "space.blocks=1", "space.nodes=2"],
    "ran_e": ["space.stage_depths=[1,1,1,1]", "space.halved_layers=[]"],
    "ran_i": ["space.base_depths=[1,1,1,1]"],
}


# Sampling strategies: a budget of a few candidates (and what it constrains).
SHRINK_STRATEGY = {
    "nao": ["strategy.seed_architectures=3", "strategy.new_architectures=1", "strategy.top_k=3",
            "strategy.epochs=2", "strategy.iterations=1"],
    "evolution": ["strategy.population_size=2", "strategy.sample_size=2", "strategy.evaluations=3"],
    "spos": ["strategy.population_size=2", "strategy.sample_size=2", "strategy.evaluations=3"],
    "novelty": ["strategy.population_size=2", "strategy.sample_size=2", "strategy.evaluations=3"],
    "enas": ["strategy.controller_epochs=2", "strategy.controller_batch=1", "strategy.controller_steps=1",
             "strategy.derive_samples=2"],
    "progressive": ["strategy.beam_size=1", "strategy.predictor_steps=5"],
    "bo": ["strategy.evaluations=3", "strategy.startup=2"],
    "autokeras": ["strategy.evaluations=3", "strategy.t_min=0.05"],
    "teg_evolution": ["strategy.population_size=2", "strategy.sample_size=2", "strategy.evaluations=3"],
}
# Candidates evaluated at a time on Ray where a method's point is parallel evaluation (one elsewhere):
# EPNAS's target networks of a policy step, asked at once and scored by two replicas.
CONCURRENCY = {"epnas": 2}
# Gradient strategies with settings of their own to shrink.
SHRINK_GRADIENT = {
    # One warm-up epoch of the two, so that the second takes theta's steps (and PruNet prunes).
    "fbnet": ["strategy.arch_start_epoch=1"],
    "prunet": ["strategy.arch_start_epoch=1"],
    "pc_darts": ["strategy.arch_start_epoch=1", "train.warmup_epochs=1"],
    "teg_nas_prune": ["strategy.batch_size=2", "strategy.region_inputs=20", "strategy.region_batches=1",
                      "strategy.repeat=1"],
}
SHRINK_EVALUATOR = {
    "scratch": ["evaluator.epochs=1", "evaluator.channels=4", "evaluator.layers=1"],
    "morphism": ["evaluator.epochs=1"],
    "supernet": ["evaluator.bn_batches=1"],
    "training_free": ["evaluator.batch_size=8", "evaluator.channels=4", "evaluator.layers=1",
                      "evaluator.region_inputs=50", "evaluator.region_batches=1"],
    "nb201_table": [],  # lookups: nothing to shrink
}


# The quick starts of the methods and spaces of the seed papers that came after DARTS's family
# (issues "the rest of the seed papers' search spaces" and "... search methods"): they run through
# `raynas search` on a local Ray below; the others in-process.
ON_RAY = {
    "nexception_quickstart.yaml", "xd_quickstart.yaml", "morphological_quickstart.yaml",
    "ran_quickstart.yaml", "ran_i_quickstart.yaml", "stacked_bnas_quickstart.yaml",
    "rf_darts_quickstart.yaml", "rf_darts_robust_quickstart.yaml", "convnext_quickstart.yaml",
    "convnext_macro_quickstart.yaml",
    "autokeras_quickstart.yaml", "epnas_quickstart.yaml", "epnas_fbnet_quickstart.yaml",
    "prunet_quickstart.yaml", "teg_nas_quickstart.yaml", "teg_reinforce_quickstart.yaml",
    "teg_evolution_quickstart.yaml", "oneshot_path_dropout_quickstart.yaml",
    "nao_morphological_quickstart.yaml",
}


def shrunk(path: Path, tmp_path: Path, backend: str) -> list[str]:
    """``--set`` overrides that shrink the job at ``path`` to seconds, tracked in ``tmp_path``."""
    original = load_job(path)
    parallel = CONCURRENCY.get(original.strategy.name, 1)  # in-process: one at a time
    overrides = [
        *SHRINK_SPACE[original.space.name], f"execution.backend={backend}",
        "execution.cpus_per_worker=1", f"execution.concurrency={parallel if backend == 'ray' else 1}",
        f"tracking.tracking_uri={mlflow_store(tmp_path)}",
        f"tracking.output_dir={tmp_path / 'runs'}",
        # Every space's picture is rendered in tests/test_space_registry.py, and a search's in
        # tests/test_tracking.py and test_sampling_search.py; drawing them here took about a third
        # of these runs' time.
        "tracking.pictures=false",
    ]
    if original.data.config is not None:  # (a table's search names no data: it reads none)
        overrides += ["data.limit=64", "data.batch_size=16"]
    if getattr(original.space.config, "robust", None):  # RobustDARTS's spaces have 4-node cells
        overrides.append("space.nodes=4")
    if original.evaluator is None or original.evaluator.name == "supernet":
        overrides.append("train.epochs=2")  # the supernet's epochs (scratch and proxies train none)
        overrides += SHRINK_GRADIENT.get(original.strategy.name, [])
    if original.evaluator is not None and original.evaluator.name == "scratch":
        overrides.append("tune.enabled=false")  # in-process here; tests/test_tune.py runs Tune
    finetuned = original.evaluator is not None and original.evaluator.name == "supernet" and (
        original.evaluator.config.epochs > 0
    )
    if finetuned:  # fine-tuned as Tune trials: scored as inherited here; tests/test_tune.py tunes them
        overrides += ["tune.enabled=false", "evaluator.epochs=0"]
    if original.evaluator is not None:
        overrides += SHRINK_STRATEGY.get(original.strategy.name, ["strategy.evaluations=3"])
        # The fbnet space's sizes are its stages' (no channels or layers to shrink by).
        sized = original.space.name != "fbnet"
        overrides += [o for o in SHRINK_EVALUATOR[original.evaluator.name]
                      if sized or not o.startswith(("evaluator.channels=", "evaluator.layers="))]
    if original.final.top:
        sized = original.space.name != "fbnet"
        # A job choosing among its seeds (DARTS's four searches) chooses between two here.
        overrides += ["final.top=2", "seeds=[0,1]"] if original.seeds else ["final.top=1"]
        overrides += ["final.epochs=1"]
        overrides += ["final.channels=4", "final.layers=1"] if sized else []
        overrides += ["final.batch_size=2"] if original.final.batch_size else []
    return overrides


@pytest.mark.parametrize("path", [p for p in QUICK_JOBS if p.name not in ON_RAY], ids=lambda p: p.name)
def test_quickstart_job_runs_shrunk(path: Path, tmp_path: Path) -> None:
    """Each method's job file runs end to end (shrunk to seconds, in-process) and records what it
    found in MLflow: the genotype of every epoch (gradient strategies) or every candidate as a
    child run of the search (sampling strategies)."""
    from raynas.runs import run_search

    config = load_job(path, shrunk(path, tmp_path, "local"))
    result = run_search(config, echo=lambda _: None)
    assert_recorded(config, result.run_id)


@pytest.mark.parametrize("path", sorted(p for p in QUICK_JOBS if p.name in ON_RAY), ids=lambda p: p.name)
def test_quickstart_job_runs_through_raynas_search_on_a_local_ray(
    path: Path, tmp_path: Path, ray_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The quick starts of the later seed papers' spaces and methods, shrunk, as a user runs them:
    `raynas search JOB --address ...` on a local Ray head, their work in Ray actors; each ends with
    exit status 0 and its answer, and records what it found in MLflow (EPNAS's target networks
    scored by two Ray actors at once)."""
    from raynas.cli import main

    overrides = shrunk(path, tmp_path, "ray")
    config = load_job(path, overrides)
    args = ["search", str(path), *(arg for o in overrides for arg in ("--set", o)), "--address", ray_head]
    assert main(args) == 0
    out = capsys.readouterr().out
    searching = next(line for line in out.splitlines() if line.startswith("Searching "))
    assert searching.startswith(f"Searching {config.space.name} with {config.strategy.name}")
    assert " in Ray actor on " in searching or " Ray actor(s) on 1 node(s)" in searching, searching
    if config.strategy.name in CONCURRENCY:  # the candidates' replicas, each in a Ray actor of its own
        assert f" {CONCURRENCY[config.strategy.name]} Ray actor(s) on " in searching, searching
    run_id = out.split("MLflow run: ")[-1].split()[0]
    assert_recorded(config, run_id)


def assert_recorded(config: Any, run_id: str) -> None:
    """The search's MLflow run holds every epoch's genotype (gradient strategies) or every
    candidate as a child run (sampling strategies)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["raynas.strategy"] == config.strategy.name
    if config.evaluator is None:
        artifacts = {a.path for a in client.list_artifacts(run_id, "genotypes")}
        assert artifacts == {"genotypes/epoch_000.json", "genotypes/epoch_001.json"}
    else:
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        assert len(children) >= 3


# The jobs with a paper's own settings, each on the dataset of its paper.
PAPER_JOBS = [p for p in JOBS if not p.name.endswith("quickstart.yaml")]
# Settings that shrink what a paper's dataset brings (an image size, a crop, a sequence length).
SHRINK_DATA = {
    "imagenet": ["data.image_size=32"],
    "cityscapes": ["data.crop_size=16", "data.downscale=1", "data.batch_size=2"],
    "ptb": ["data.bptt=4", "data.batch_size=2"],
}


@pytest.mark.parametrize("path", PAPER_JOBS, ids=lambda p: p.name)
def test_paper_job_runs_shrunk_on_its_dataset_in_the_official_format(path: Path, tmp_path: Path) -> None:
    """Each job with a paper's settings runs end to end, shrunk to seconds, on a tiny copy of its
    paper's dataset written in the official on-disk format (tests/fixtures.py), as a user runs it
    after pointing `data.path` at the real one. A job whose strategy reads a device's latency table
    first measures one for its (shrunk) layout with `raynas latency --job`, as the job file says."""
    from fixtures import FIXTURES, write_random_ptb, write_whole_nb201_table

    from raynas.cli import main
    from raynas.config import load_yaml
    from raynas.runs import run_search, run_seeds

    original = load_job(path)
    overrides = [*shrunk(path, tmp_path, "local"),
                 "execution.gpus_per_worker=0", "execution.accelerator=null"]  # this machine's CPU
    if original.data.config is not None:  # (a table's search names no data: it reads none)
        data = FIXTURES[original.data.name](tmp_path / "data")
        if original.data.name == "ptb" and original.final.top:  # rnn/train.py's 10 validation streams
            data = write_random_ptb(tmp_path / "data", train_words=300, valid_words=300)
        located = [f"data.path={data}"] if hasattr(original.data.config, "path") else []  # not digits
        overrides += [*located, *SHRINK_DATA.get(original.data.name, []), "data.num_workers=0"]
    if original.evaluator is not None and original.evaluator.name == "nb201_table":  # the benchmark's file
        table = write_whole_nb201_table(tmp_path / "nb201.pth", (original.evaluator.config.dataset,))
        overrides.append(f"evaluator.path={table}")
    layout = original.space.config
    if hasattr(layout, "stage_depths"):  # a block per stage, as many stages as the paper's layout
        overrides.append(f"space.stage_depths={[1] * len(layout.stage_depths)}")
    if "latency_table" in (strategy := original.strategy.config.__dict__):
        job = tmp_path / "shrunk.yaml"
        job.write_text(yaml.safe_dump(load_yaml(path, overrides)))
        tables = tmp_path / "tables"
        assert main(["latency", "--job", str(job), "--device", "here", "--out", str(tables),
                     "--warmup", "1", "--repeats", "1"]) == 0
        overrides += ["strategy.latency_table=here", f"strategy.latency_dir={tables}"]
        assert strategy["latency_table"] != "here"
    config = load_job(path, overrides)
    if config.seeds:  # a search per seed, then the choice among them (retraining each one's cell)
        seeds = run_seeds(config, echo=lambda _: None)
        assert seeds.selection is not None and sorted(seeds.selection.retrained) == [0, 1]
        run_ids = [result.run_id for result in seeds.results]
    else:
        run_ids = [run_search(config, echo=lambda _: None).run_id]
    for run_id in run_ids:
        assert_recorded(config, run_id)
