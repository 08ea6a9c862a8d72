"""What starting raynas costs: every process (the CLI, each Ray worker and Tune trial) imports the
drivers, so libraries that only some work needs load where that work starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import answers_without_heavy_imports

# torchvision pulls in torch._dynamo (about 4 s on two cores); scipy about 1 s.
LAZY = ("torchvision", "scipy")


def test_the_drivers_start_without_torchvision_or_scipy() -> None:
    code = (
        "import sys\n"
        "import raynas.cli, raynas.runs, raynas.runs.sampling, raynas.runs.gradient\n"
        "import raynas.execution.ray_actors\n"
        f"print(sorted(m for m in {LAZY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_searches_without_pictures_never_import_matplotlib(tmp_path: Path) -> None:
    """matplotlib (0.7 s) loads only where a picture is drawn: a gradient and a sampling search
    with ``tracking.pictures: false`` finish, their models registered, without it."""
    from conftest import tiny_job
    from mlflow.tracking import MlflowClient
    from test_sampling_search import sampling_job

    for name in ("gradient", "sampling"):
        (tmp_path / name).mkdir()  # (where mlflow_store puts a copy of an empty store)
    gradient = tiny_job(tmp_path / "gradient", train={"epochs": 1})
    sampling = sampling_job(tmp_path / "sampling", {"name": "random", "evaluations": 2},
                            {"name": "scratch", "epochs": 1, "channels": 4, "layers": 1})
    assert gradient["tracking"]["pictures"] is False and sampling["tracking"]["pictures"] is False
    code = (
        "import sys, json\n"
        "from raynas.runs import run_search\n"
        "from raynas.runs.jobs import parse_job\n"
        "for job in json.loads(sys.argv[1]):\n"
        "    run_search(parse_job(job), echo=lambda _: None)\n"
        "print('matplotlib' in sys.modules)\n"
    )
    jobs = json.dumps([gradient, sampling], default=str)
    done = subprocess.run([sys.executable, "-c", code, jobs], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout[-2000:]
    for job in (gradient, sampling):  # each search's answer is in the model registry
        client = MlflowClient(job["tracking"]["tracking_uri"])
        assert client.search_model_versions(f"name = 'raynas-{job['name']}'")


def test_the_component_manifest_lists_what_the_registries_hold() -> None:
    import typing

    from raynas.config import manifest_type
    from raynas.runs.jobs import MANIFEST, REGISTRIES, component_manifest

    manifest = component_manifest()
    for section, registry in REGISTRIES.items():  # every type written reads back as the one declared
        for name in manifest[section]["names"]:
            config = registry.entry(name).config
            if config is not None:
                hints = typing.get_type_hints(config)
                for key, spec in manifest[section]["names"][name].items():
                    # None: a type JSON does not hold, left to the registry; a section of its own
                    # (a dataclass of raynas's) lists its settings instead, as a component does
                    if spec is not None and "settings" not in json.dumps(spec):
                        assert manifest_type(spec) == hints[key], (section, name, key)
    assert json.loads(MANIFEST.read_text()) == manifest, (
        "raynas/components.json is out of date: write it again with "
        "python -c 'from raynas.runs.jobs import write_component_manifest; write_component_manifest()'"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"space": {"name": "darts", "channelz": 4}},
         "unknown config key 'space.channelz'; allowed: channels, layers, nodes,"),
        ({"strategy": {"name": "dartz"}},
         "config key 'strategy.name': unknown strategy 'dartz'; choose one of: "),
        ({"data": "digits", "evaluator": {"name": "scratch", "epochz": 1}},
         "unknown config key 'evaluator.epochz'; allowed: epochs,"),
        ({"space": {"name": "darts", "channels": "four"}}, "config key 'space.channels' must be an int"),
        ({"space": {"name": "darts", "primitives": "skip_connect"}}, "config key 'space.primitives' must be"),
        ({"space": {"name": "darts", "channels": 0}}, "space.channels must be an even number >= 2, got 0"),
        ({"data": "cifar10"}, "config key 'data.path' is missing: the folder holding the CIFAR batches"),
    ],
    ids=["key", "name", "evaluator-key", "type", "tuple-type", "range", "missing"],
)
def test_a_bad_component_section_is_answered_before_torch_is_imported(
    tmp_path: Path, section: dict, message: str
) -> None:
    job = {"name": "bad", "space": "darts", "strategy": "darts", "data": {"name": "digits"}, **section}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code = (
        "import sys\nfrom raynas.cli import main\n"
        f"code = main(['search', {str(path)!r}])\n"
        "print(code, sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[-2] == "2 []", done.stdout + done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    # The same job loaded with the registries imported gives the same line.
    from raynas.errors import ConfigError
    from raynas.runs.jobs import load_job

    with pytest.raises(ConfigError) as error:
        load_job(path)
    assert message in str(error.value) and str(error.value) in done.stderr


def outside(rule: Any, default: Any) -> list[Any]:
    """Values of a setting's type (``default`` shows it) that ``rule`` refuses: one below and one
    above its bounds, one of the wrong parity, one not among its choices, an empty one where the
    setting must be given; a tuple setting gets a one-item list of each."""
    if isinstance(default, tuple):
        item = default[0] if default else 1
        return [[value] for value in outside(rule, item)]
    step = 1 if isinstance(default, int) else 0.5
    values: list[Any] = [""] if rule.missing else []
    if rule.one_of is not None:
        numbers = [v for v in rule.one_of if isinstance(v, (int, float))]
        values.append(max(numbers) + 1 if numbers else "no-such-choice")
    if rule.ge is not None:
        values.append(rule.ge - step)
    if rule.gt is not None:
        values.append(rule.gt)
    if rule.le is not None:
        values.append(rule.le + step)
    if rule.lt is not None:
        values.append(rule.lt)
    if rule.even or rule.odd:
        values.append((rule.ge or 0) + 1 if rule.even else (rule.ge or 1) + 1)
    return [type(default)(v) if isinstance(v, (int, float)) and not isinstance(default, str) else v
            for v in values]


def test_every_range_of_every_component_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """Each rule of each built-in component's settings (raynas/components.json), broken below,
    above, in parity or choice, or left empty: `raynas search` answers it with exit 2 and one line
    that names the key, without importing torch, Ray or MLflow, and with the line the component's
    dataclass itself gives when the registry builds the section."""
    import dataclasses

    from raynas.config import Rule, build
    from raynas.errors import ConfigError
    from raynas.runs.jobs import REGISTRIES, component_manifest

    base = {"name": "bad", "space": "darts", "strategy": "darts", "data": "digits"}
    cases, expected = [], []
    for section, listed in component_manifest().items():
        for name, rules in listed["rules"].items():
            config = REGISTRIES[section].entry(name).config
            defaults = {f.name: f.default for f in dataclasses.fields(config)}
            fixed = {"path": "/data"} if "path" in defaults else {}  # checked before some ranges
            for key, spec in rules.items():
                for value in outside(Rule.from_json(spec), defaults[key]):
                    data = {"name": name, **fixed, key: value}
                    path = tmp_path / f"{len(cases)}.yaml"
                    path.write_text(yaml.safe_dump({**base, section: data}))
                    cases.append(["search", str(path)])
                    with pytest.raises(ConfigError) as error:  # the registry's way, torch loaded
                        build(config, {k: v for k, v in data.items() if k != "name"}, section)
                    expected.append((f"{section}.{key}", str(error.value)))
    assert len({where for where, _ in expected}) >= 60, "too few component ranges"
    answers = answers_without_heavy_imports(cases)
    for (status, err), (where, message), args in zip(answers, expected, cases, strict=True):
        assert status == 2 and err.count("\n") == 1 and where in err, (args, err)
        assert err == f"raynas: error: {message}\n", (args, err, message)


@pytest.mark.parametrize("args, status, answer", [
    (["search", str(Path(__file__).parents[1] / "jobs" / "quickstart.yaml"), "--set", "space.layers=-1"], 2,
     "raynas: error: space.layers must be at least 3 (two reduction cells), got -1\n"),
    (["--help"], 0, ""),
], ids=["bad-job", "help"])
def test_the_raynas_command_answers_within_a_second(args: list[str], status: int, answer: str) -> None:
    """`raynas search` on a job whose component section is out of range, and `raynas --help`, as
    a user runs them (the installed command): each answers in under a second of the machine's
    time (its CPU time: 0.3 s here; torch's import alone takes 4 s), and under 2 s of the wall
    clock on a two-core machine busy with the other tests."""
    import resource
    import time

    command = str(Path(sys.executable).parent / "raynas")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([command, *args], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert done.returncode == status and done.stderr == answer, done.stderr
    assert status == 2 or done.stdout.startswith("usage: raynas"), done.stdout
    assert cpu < 1, f"{cpu:.2f} s of CPU"
    assert seconds < 2, f"{seconds:.1f} s"


# A job per rule that ties a component's settings together or reads its tables (each Check of
# raynas/components.json), breaking that rule alone: (section, component, settings).
CHECK_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("space", "darts", {"robust": "s2", "operations": "convnext"}),
    ("space", "darts", {"robust": "s2", "nodes": 3}),
    ("space", "darts", {"primitives": ["skip_connect", "no_such_op"]}),
    ("space", "darts", {"primitives": ["none"]}),
    ("space", "darts", {"mixed_op": "no_such_mixed_op"}),
    ("space", "darts", {"mixed_op": "partial", "channels": 6}),
    ("space", "nb201", {"mixed_op": "attention", "channels": 6}),
    ("space", "stacked_bnas", {"primitives": ["no_such_op"]}),
    ("space", "stacked_bnas", {"primitives": ["none"]}),
    ("space", "stacked_bnas", {"knowledge_ops": ["conv_1x1", "conv_1x1"]}),
    ("space", "stacked_bnas", {"knowledge_ops": ["no_such_embedding"]}),
    ("space", "auto_deeplab", {"primitives": ["no_such_op"]}),
    ("space", "auto_deeplab", {"primitives": ["none"]}),
    ("space", "darts_rnn", {"activations": ["no_such_activation"]}),
    ("space", "darts_rnn", {"activations": ["none"]}),
    ("space", "autokeras", {"seed_strides": [3]}),
    ("space", "autokeras", {"seed_strides": [1, 1, 1], "max_blocks": 2}),
    ("space", "fbnet", {"stage_channels": [], "stage_depths": [], "stage_strides": []}),
    ("space", "fbnet", {"stage_depths": [1]}),
    ("space", "convnext", {"depth_choices": [[]]}),
    ("space", "convnext", {"width_choices": [[0]]}),
    ("space", "convnext", {"depth_choices": [[2]]}),
    ("space", "convnext", {"kernel_choices": [4]}),
    ("space", "convnext", {"expansion_choices": [0]}),
    ("space", "convnext", {"activation_choices": ["tanh"]}),
    ("space", "convnext", {"norm_choices": ["ln", "ln"]}),
    ("space", "convnext", {"stem_choices": []}),
    ("space", "convnext", {"kernel_choices": [3, 3]}),
    ("space", "convnext", {"act_layer_choices": ["two"]}),
    ("space", "convnext", {"norm_layer_choices": []}),
    ("space", "convnext", {"downsample_choices": ["strided", "strided"]}),
    ("space", "convnext", {"expansion_choices": [2, 2]}),
    ("space", "convnext", {"depth_choices": [[2, 2], [2], [6], [2]]}),
    ("space", "convnext", {"width_choices": [[64], [128, 128], [256], [512]]}),
    ("space", "nexception", {"stem_choices": ["patch4"]}),
    ("space", "nexception", {"activation_choices": ["tanh"]}),
    ("space", "nexception", {"norm_choices": []}),
    ("space", "nexception", {"places_choices": ["every", "every"]}),
    ("space", "nexception", {"pool_choices": ["average"]}),
    ("space", "nexception", {"block_end_choices": ["cbam"]}),
    ("space", "nexception", {"middle_choices": ["resnet"]}),
    ("space", "nexception", {"depth_choices": [0]}),
    ("space", "nexception", {"kernel_choices": [3, 3]}),
    ("space", "nexception", {"kernel_choices": [4]}),
    ("space", "nexception", {"widths": [32, 64]}),
    ("space", "ran_e", {"stage_depths": [1]}),
    ("space", "ran_e", {"kernels": []}),
    ("space", "ran_e", {"halved_layers": [1]}),
    ("space", "ran_i", {"base_depths": [3]}),
    ("space", "ran_i", {"width_multipliers": []}),
    ("space", "ran_i", {"width_multipliers": [1.0, 0.004]}),
    ("space", "xd", {"backbones": []}),
    ("space", "xd", {"backbones": ["vgg16"]}),
    ("space", "xd", {"depth_choices": [1, 1]}),
    ("strategy", "darts", {"arch_betas": [0.5]}),
    ("strategy", "darts", {"same_batch": True, "order": 2}),
    ("strategy", "gdas", {"tau_max": 0.05}),
    ("strategy", "nao", {"step_size": 5.0, "max_step_size": 2.0}),
    ("strategy", "milenas", {"model_size_band": [2.0, 1.0]}),
    ("strategy", "milenas", {"stop_at_convs": [6]}),
    ("strategy", "milenas", {"track_model_size": False, "stop_at_convs": [6, 0]}),
    ("strategy", "teg_nas_prune", {"indicators": ["ntk", "ntk"]}),
    ("strategy", "teg_nas_prune", {"batch_size": 1}),
    ("strategy", "epnas", {"candidates": 2, "batch_size": 4}),
    ("strategy", "epnas", {"max_latency_ms": 5.0}),
    ("strategy", "evolution", {"sample_size": 30}),
    ("strategy", "evolution", {"evaluations": 10}),
    ("strategy", "novelty", {"sample_size": 30}),
    ("strategy", "spos", {"mutation_num": 40, "crossover_num": 20}),
    ("strategy", "fbnet", {"latency_dir": "tables"}),
    ("strategy", "ran_e", {"latency_table": "no_such_device", "seed_architecture": "ran_e_x"}),
    ("strategy", "ran_i", {"reference": "RAN-i-X"}),
    ("space", "xd", {"backbones": ["darts:DARTS_V9"]}),
    # A section inside a component's (strategy.cell_shape), its own checks and ranges.
    ("strategy", "evolution", {"cell_shape": {"cells": "normal"}}),
    ("strategy", "random", {"cell_shape": {"min_width": 3.0, "max_width": 2.0}}),
    ("strategy", "spos", {"cell_shape": {"min_depth": 4, "max_depth": 3}}),
    ("strategy", "epnas", {"cell_shape": {"max_depth": -1}}),
    ("strategy", "enas", {"cell_shape": {"max_dept": 3}}),
    ("strategy", "bo", {"cell_shape": {"max_depth": "three"}}),
    ("strategy", "progressive", {"cell_shape": [3]}),
    ("evaluator", "nb201_table", {"path": "nb201.pth", "dataset": "cifar10", "setname": "x-valid"}),
]


def test_every_check_of_every_component_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """Each rule between a built-in component's settings, or of a setting's items against the
    component's tables (a Check: primitive names, mixed ops, per-stage list lengths, ...), broken
    alone: `raynas search` answers it with exit 2 and the one line that the component's dataclass
    gives when the registry builds the section, without importing torch, Ray or MLflow. Every
    check written in raynas/components.json is broken by some job here."""
    import dataclasses
    import json

    from raynas.config import Check, Rule, build, check_rule, checks_of, rules_of
    from raynas.errors import ConfigError
    from raynas.runs.jobs import REGISTRIES, component_manifest
    from raynas.strategies.sampling.base import CellShapeLimits

    def tuples(value: Any) -> Any:
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    def keeps(rule: Rule, value: Any) -> bool:
        try:
            check_rule(value, rule, "")
        except ConfigError:
            return False
        return True

    base = {"name": "bad", "space": "darts", "strategy": "darts", "data": "digits"}
    cases, expected, fired = [], [], set()
    for section, name, settings in CHECK_CASES:
        path = tmp_path / f"{len(cases)}.yaml"
        path.write_text(yaml.safe_dump({**base, section: {"name": name, **settings}}))
        cases.append(["search", str(path)])
        config = REGISTRIES[section].entry(name).config
        with pytest.raises(ConfigError) as error:  # the registry's way, torch loaded
            build(config, settings, section)
        expected.append(str(error.value))
        if "cell_shape" in settings:  # a section of the strategy's own, with its own checks
            config, settings = CellShapeLimits, settings["cell_shape"]
        # The check that says it, if any: the first of the component's checks the settings break.
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        if not isinstance(settings, dict) or not set(settings) <= set(defaults):
            continue  # not a mapping, or an unknown key
        values = {**defaults, **{k: tuples(v) for k, v in settings.items()}}
        ranges = [keeps(rule, values[k]) for k, rule in rules_of(config).items() if k in settings]
        if all(ranges) and all(isinstance(tuples(v), type(defaults[k])) for k, v in settings.items()):
            check = next((c for c in checks_of(config) if c.broken_by(values) is not None), None)
            if check is not None:
                assert check.broken_by(values) == str(error.value), (name, settings)
                fired.add(json.dumps(check.to_json(), sort_keys=True))

    def checks_in(node: Any) -> list[Any]:  # every check the manifest writes, at any depth
        if isinstance(node, dict):
            here = node.get("checks", {})
            listed = [c for specs in here.values() for c in specs] if isinstance(here, dict) else here
            return listed + [c for k, v in node.items() if k != "checks" for c in checks_in(v)]
        return [c for v in node for c in checks_in(v)] if isinstance(node, list) else []

    manifest = component_manifest()
    written = {json.dumps(Check.from_json(c).to_json(), sort_keys=True) for c in checks_in(manifest)}
    assert written - fired == set(), "checks no job here breaks"
    answers = answers_without_heavy_imports(cases)
    for (status, err), message, case in zip(answers, expected, CHECK_CASES, strict=True):
        assert status == 2 and err == f"raynas: error: {message}\n", (case, err, message)


# A job per rule between a search job's sections (raynas.config.SEARCH_CHECKS and each component's
# job_checks in raynas/components.json), breaking that rule alone: the sections it sets over a
# DARTS search on digits.
TABLE = {"latency_table": "no_such_device"}
JOB_CASES: list[dict[str, Any]] = [
    {"strategy": "random"},
    {"evaluator": "scratch"},
    {"strategy": "enas", "evaluator": "scratch"},
    {"strategy": "random", "evaluator": "training_free", "train": {"epochs": 2}},
    {"space": "autokeras", "strategy": "random", "evaluator": "scratch"},
    {"space": "fbnet", "strategy": {"name": "random", "cell_shape": {"max_depth": 3}},
     "evaluator": "scratch"},
    {"space": "nb201", "strategy": {"name": "random", "cell_shape": {"min_depth": 2, "max_width": 0.5}},
     "evaluator": "scratch"},
    {"execution": {"concurrency": 2, "backend": "local"}},
    {"execution": {"concurrency": 2}},
    {"strategy": "random", "evaluator": "training_free", "tune": {"enabled": True}},
    {"strategy": "random", "evaluator": {"name": "supernet", "epochs": 1}},
    {"strategy": "random", "evaluator": "scratch", "tune": {}, "execution": {"backend": "local"}},
    {"strategy": {"name": "fbnet", **TABLE}},
    {"strategy": {"name": "prunet", **TABLE}},
    {"strategy": {"name": "ran_e", **TABLE}, "evaluator": "scratch"},
    {"space": "fbnet", "strategy": {"name": "ran_e", **TABLE}, "evaluator": "scratch"},
    {"space": "ran_e", "strategy": {"name": "ran_e", "seed_block": "no_such_block", **TABLE},
     "evaluator": "scratch"},
    {"strategy": "ran_i", "evaluator": "scratch"},
    {"strategy": "autokeras", "evaluator": "scratch"},
    {"strategy": "enas", "evaluator": "supernet", "train": {"epochs": 3}},
    {"strategy": "progressive", "evaluator": "supernet"},
    {"strategy": {"name": "epnas", "max_params": 1e6, "dataset": "no_such_dataset"}, "evaluator": "scratch"},
    {"strategy": {"name": "epnas", "max_latency_ms": 5.0, **TABLE}, "evaluator": "scratch"},
    {"space": "xd", "strategy": "random", "evaluator": "supernet"},
    {"space": "convnext", "strategy": "random", "evaluator": {"name": "supernet", "path_dropout": 0.1}},
    {"strategy": "random", "evaluator": "morphism"},
    {"strategy": "random", "evaluator": {"name": "nb201_table", "path": "nb201.pth"}, "data": None},
    # A table's search: data left out only there, the table's dataset if given, none to retrain on.
    {"data": None},
    {"space": "nb201", "strategy": "random", "evaluator": {"name": "nb201_table", "path": "nb201.pth"}},
    {"space": "nb201", "strategy": "random", "evaluator": {"name": "nb201_table", "path": "nb201.pth"},
     "data": None, "final": {"top": 1}},
    {"strategy": "random", "evaluator": {"name": "training_free", "benchmark": "nb201.pth"}},
    {"final": {"top": 2}},
    {"data": {"name": "digits", "train_portion": 1.0}},
    {"strategy": {"name": "random", "cell_shape": {"min_depth": 5, "min_width": 3}}, "evaluator": "scratch"},
    {"space": "enas_micro"},  # a gradient strategy on a supernet without architecture weights
    {"strategy": {"name": "evolution", "time_budget": 100}, "evaluator": "scratch"},  # no recorded time
    {"train": {"grad_clip": 0}},  # no clip for a gradient strategy
    {"train": {"decay_in_loss": True}},  # the L2 term of a sampling search's supernet, for DARTS
    {"data": {"name": "ptb", "path": "/tmp"}},  # text for a space of image networks
    {"data": {"name": "cityscapes", "path": "/tmp"}},  # a label per pixel for a space of classifiers
    # Sizes for a space whose networks take theirs from its config.
    {"space": "fbnet", "strategy": {"name": "random", "evaluations": 2},
     "evaluator": {"name": "training_free", "channels": 8}},
    {"space": "fbnet", "strategy": {"name": "random", "evaluations": 2}, "evaluator": "training_free",
     "final": {"top": 1, "layers": 3}},
]


def test_every_rule_between_sections_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """Each rule between a search job's sections (what a sampling or gradient strategy needs of
    the evaluator, train, tune and execution; what a strategy or evaluator needs of the space, by
    the space's traits; ENAS's controller_epochs and train.epochs; epnas's dataset), broken alone:
    `raynas search` answers it with exit 2 and the line the full validation (the registries,
    torch loaded) gives, without importing torch, Ray or MLflow. Every such rule written in
    raynas/components.json is broken by some job here."""
    import json
    import re

    from raynas.config import SEARCH_CHECKS, Check
    from raynas.errors import ConfigError
    from raynas.runs.jobs import component_manifest, load_job

    base = {"name": "bad", "space": "darts", "strategy": "darts", "data": "digits"}
    cases, expected = [], []
    for sections in JOB_CASES:
        path = tmp_path / f"{len(cases)}.yaml"
        path.write_text(yaml.safe_dump({**base, **sections}))
        cases.append(["search", str(path)])
        with pytest.raises(ConfigError) as error:  # the full validation, torch loaded
            load_job(path)
        expected.append(str(error.value))

    def pattern(check: Check) -> re.Pattern[str]:  # the lines the check's message can be
        parts = re.split(r"\{[^{}]*\}", check.says)
        return re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)

    manifest = component_manifest()
    written = {json.dumps(c.to_json(), sort_keys=True): c for c in SEARCH_CHECKS}
    for listed in manifest.values():
        for specs in listed["job_checks"].values():
            written.update({json.dumps(s, sort_keys=True): Check.from_json(s) for s in specs})
    unbroken = [key for key, c in written.items() if not any(pattern(c).fullmatch(m) for m in expected)]
    assert unbroken == [], "rules between sections no job here breaks"
    answers = answers_without_heavy_imports(cases)
    for (status, err), message, case in zip(answers, expected, JOB_CASES, strict=True):
        assert status == 2 and err == f"raynas: error: {message}\n", (case, err, message)


def test_the_traits_each_space_declares_are_what_its_code_does() -> None:
    """What the rules between a job's sections read of a built-in space (its registered traits,
    :data:`raynas.config.TRAITS`) is what the space and its supernet's class do: the flat view,
    cell shapes, two-input cells, latency keys, scaling, morphisms, every layer's candidates, and
    a supernet that samples paths (set_path), drops paths, is layer-wise, or has no architecture
    weights (no genotype to derive)."""
    import typing

    from raynas.config import trait_values
    from raynas.runs.jobs import component_manifest
    from raynas.spaces import SPACES
    from raynas.strategies.sampling.progressive import cell_layout
    from raynas.supernet.fbnet import FbnetSupernet
    from raynas.supernet.registry import SUPERNETS
    from raynas.types import ChoiceSpace

    for name, declared in component_manifest()["space"]["traits"].items():
        entry = SPACES.entry(name)
        config = entry.config()
        space = SPACES.create(name, config)
        values = {f: getattr(config, f) for f in config.__dataclass_fields__}
        traits = trait_values(declared, values)
        supernet = None
        if name in SUPERNETS:
            supernet = typing.get_type_hints(SUPERNETS.get(name))["return"]
            supernet = FbnetSupernet if name == "fbnet" else supernet  # (prunet's when asked for)
        decisions = space.decisions() if isinstance(space, ChoiceSpace) else ()
        candidates = {d.options for d in decisions}
        does = {
            "choices": isinstance(space, ChoiceSpace),
            "cell_shape": callable(getattr(space, "cell_shape", None)),
            "two_input_cells": bool(decisions) and cell_layout(decisions, space.decode([0] * len(decisions)))
            is not None,
            "one_shot": hasattr(supernet, "set_path"),
            "drop_paths": hasattr(supernet, "drop_paths"),
            # no architecture weights, so no genotype to derive from them
            "path_only": supernet is not None and not hasattr(supernet, "genotype"),
            "layer_shapes": hasattr(supernet, "layer_shapes"),
            "latency_tables": hasattr(space, "layer_latency_keys"),
            "latency_keys": hasattr(space, "latency_keys"),
            "layer_candidates": next(iter(candidates)) if hasattr(space, "layer_latency_keys") else False,
            "scale": hasattr(space, "scale"),
            "morphisms": hasattr(space, "seed_architecture") and hasattr(space, "neighbours"),
            "tokens": hasattr(space, "example_input"),  # its networks' inputs are token ids
            "fixed_size": refuses_sizes(space),
        }
        assert traits is not None
        assert {k: traits[k] for k in does} == does, name
        if does["cell_shape"]:
            assert traits["cell_shapes"] == cell_shapes_counted(space), name


def refuses_sizes(space: Any) -> bool:
    """Whether ``space`` refuses to build a network at channels and layers given to it."""
    from raynas.data import dataset_info
    from raynas.errors import ConfigError

    info = dataset_info(getattr(space, "reference_dataset", "cifar10"))
    import random

    arch = space.sample(random.Random(0))
    try:
        space.build(arch, info, channels=8, layers=3)
    except ConfigError as exc:
        return "channels" in str(exc)
    except Exception:  # a size the network cannot take: it took the setting
        return False
    return False


def test_each_built_in_dataset_declares_what_it_holds_as_its_loader_reads_it() -> None:
    """The datasets' ``tokens`` and ``dense`` traits (the rules that a space reads what its
    dataset holds and predicts what it labels) are what their loaders do: token text through the
    Penn Treebank loader's settings (ptb, wikitext2), images otherwise; a label per pixel where
    the dataset's task is segmentation (cityscapes)."""
    from raynas.data import DATASETS, dataset_info
    from raynas.data.ptb import PtbConfig
    from raynas.runs.jobs import component_manifest

    declared = component_manifest()["data"]["traits"]
    assert sorted(declared) == sorted(DATASETS.names())
    for name, traits in declared.items():
        does = {"tokens": issubclass(DATASETS.entry(name).config, PtbConfig),
                "dense": dataset_info(name).task == "segmentation"}
        assert {"tokens": False, "dense": False, **traits} == does, name


def normal_cell_shapes(space: Any) -> set[tuple[int, float]]:
    """``(depth, width)`` of every normal cell of ``space``, measured with the space's own
    ``cell_shape`` on every choice of its nodes' inputs (NAS-Bench-201: on each of its 15,625
    cells, of one kind; the recurrent cell: on each of its 8! choices of predecessors; Auto-DeepLab:
    on each choice of its cell's blocks' inputs; ENAS's: on each pair of inputs of every node, the
    same one twice included, 56,700 with 5 nodes)."""
    import itertools
    import random

    cell = next(iter(space.cell_shape(space.sample(random.Random(0))))).rsplit("_", 1)[0]
    if hasattr(space, "enumerate"):
        return {(s[f"{cell}_depth"], s[f"{cell}_width"]) for s in map(space.cell_shape, space.enumerate())}
    decisions = space.decisions()
    pairs = [i for i, d in enumerate(decisions)
             if d.name.startswith(f"{cell}.") and d.name.endswith(".input_a")]
    if pairs:  # ENAS's nodes take two inputs each, the same one twice allowed: each unordered pair
        seen = set()
        op = decisions[pairs[0] + 2].options[0]  # (the shape reads no op)
        for choice in itertools.product(*(
            itertools.combinations_with_replacement(range(len(decisions[i].options)), 2) for i in pairs
        )):
            edges = tuple((op, j) for pair in choice for j in pair)
            shape = space.cell_shape(space.architecture_type(edges, edges))
            seen.add((shape[f"{cell}_depth"], shape[f"{cell}_width"]))
        return seen
    inputs = [i for i, d in enumerate(decisions)  # DARTS: the normal cell's inputs; Auto-DeepLab: its cell's
              if (d.name.startswith(f"{cell}.") and d.name.endswith(".inputs"))
              or (cell == "recurrent" and d.name.endswith(".input"))]
    seen = set()
    for choice in itertools.product(*(range(len(decisions[i].options)) for i in inputs)):
        values = [0] * len(decisions)
        for i, option in zip(inputs, choice, strict=True):
            values[i] = option
        shape = space.cell_shape(space.decode(values))
        seen.add((shape[f"{cell}_depth"], shape[f"{cell}_width"]))
    return seen


def cell_shapes_counted(space: Any) -> tuple[tuple[float, ...], ...]:
    """``[depth, least width, most width]`` for each depth the normal cells of ``space`` have."""
    widths: dict[int, list[float]] = {}
    for depth, width in normal_cell_shapes(space):
        widths.setdefault(depth, []).append(width)
    return tuple((d, min(w), max(w)) for d, w in sorted(widths.items()))


@pytest.mark.parametrize("nodes", [1, 2, 3, 5])
def test_the_cell_shapes_a_darts_space_declares_are_those_its_cells_have(nodes: int) -> None:
    """The trait the pre-check of strategy.cell_shape reads (every depth's least and most width,
    every half step between them taken) against every cell of the space, counted: with 5 nodes,
    2,700 choices of inputs."""
    from raynas.config import trait_values
    from raynas.runs.jobs import component_manifest
    from raynas.spaces import SPACES

    space = SPACES.create("darts", SPACES.entry("darts").config(nodes=nodes))
    declared = trait_values(component_manifest()["space"]["traits"]["darts"], {"nodes": nodes})
    assert declared is not None
    steps = {(d, lo + k / 2) for d, lo, hi in declared["cell_shapes"] for k in range(int(2 * (hi - lo)) + 1)}
    assert normal_cell_shapes(space) == steps


def test_a_missing_or_corrupt_latency_table_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """A latency table a search job names that does not exist, is not JSON or is not a table:
    exit 2 and one line naming it, from a process without torch, Ray or MLflow (the search's
    strategy reads the same table with the same functions once torch loads)."""
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "phone.json").write_text('{"device": "phone", "entries": {"k3": 1.5}}')
    (tmp_path / "broken.json").write_text('{"device": ')
    (tmp_path / "other.json").write_text('{"not": "a table"}')
    tables = str(tmp_path / "tables")
    jobs = {
        "device": ({"name": "fbnet", "latency_table": "laptop", "latency_dir": tables},
                   f"no latency table for device 'laptop': '{tables}/laptop.json' does not exist; "
                   f"tables in '{tables}': phone (build one with `raynas latency`)"),
        "file": ({"name": "ran_e", "latency_table": str(tmp_path / "none.json")},
                 f"latency table file '{tmp_path / 'none.json'}' does not exist"),
        "corrupt": ({"name": "prunet", "latency_table": str(tmp_path / "broken.json")},
                    f"latency table file '{tmp_path / 'broken.json'}' is not valid JSON"),
        "not-a-table": ({"name": "epnas", "max_latency_ms": 5.0,
                         "latency_table": str(tmp_path / "other.json")},
                        f"latency table file '{tmp_path / 'other.json'}' must be a JSON object with "
                        "'device' and 'entries'"),
    }
    cases = []
    for kind, (strategy, _) in jobs.items():
        space = "ran_e" if strategy["name"] == "ran_e" else "fbnet"
        job = {"name": "bad", "space": space, "strategy": strategy, "data": "digits"}
        if strategy["name"] in ("ran_e", "epnas"):
            job["evaluator"] = "scratch"
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(job))
        cases.append(["search", str(path)])
    answers = answers_without_heavy_imports(cases)
    for (status, err), (kind, (_, message)) in zip(answers, jobs.items(), strict=True):
        assert status == 2 and err.startswith(f"raynas: error: {message}"), (kind, err)
        assert err.count("\n") == 1, (kind, err)
    # The device table that exists passes this check (the job is refused later, for other reasons).
    from raynas.latency import check_named_table

    check_named_table({"name": "fbnet", "latency_table": "phone", "latency_dir": tables})
