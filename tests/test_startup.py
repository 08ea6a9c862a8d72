"""What starting raynas costs: every process (the CLI, each Ray worker and Tune trial) imports the
drivers, so libraries that only some work needs load where that work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_the_component_manifest_lists_what_the_registries_hold() -> None:
    import json
    import typing

    from raynas.config import manifest_type
    from raynas.runs.jobs import MANIFEST, REGISTRIES, component_manifest

    for section, registry in REGISTRIES.items():  # every setting's type reads back as the one declared
        for name in component_manifest()[section]["names"]:
            config = registry.entry(name).config
            if config is not None:
                hints = typing.get_type_hints(config)
                for key, spec in component_manifest()[section]["names"][name].items():
                    assert manifest_type(spec) == hints[key], (section, name, key)
    assert json.loads(MANIFEST.read_text()) == component_manifest(), (
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
    ],
    ids=["key", "name", "evaluator-key", "type", "tuple-type"],
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
