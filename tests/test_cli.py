"""The command line: ``raynas describe`` figures and one-line errors with exit status 2."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, tiny_job, write_job

from raynas.cli import main
from raynas.spaces.darts_genotype import published_genotype


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "raynas"), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_describe_gives_the_published_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # DARTS README (quark0/darts): 3.3M parameters on CIFAR-10, 4.7M on ImageNet; the authors'
    # code prints "param size = 3.349342MB" and "4.718752MB" (auxiliary head excluded).
    assert main(["describe", "--space", "darts", "--genotype", "DARTS_V2", "--dataset", "cifar10",
                 "--json"]) == 0
    cifar = json.loads(capsys.readouterr().out)
    assert cifar["params"] == 3_349_342
    assert round(cifar["params"] / 1e6, 1) == 3.3
    assert cifar["params_with_aux"] > cifar["params"]
    assert 500e6 < cifar["macs"] < 560e6

    assert main(["describe", "--genotype", "DARTS", "--dataset", "imagenet", "--json"]) == 0
    imagenet = json.loads(capsys.readouterr().out)
    assert imagenet["params"] == 4_718_752
    assert round(imagenet["params"] / 1e6, 1) == 4.7
    # Third-party conv+fc counts of this network are 523M-545M; the paper quotes 574M
    # (quark0/darts issue #46), which includes more than convolutions and the classifier.
    assert 520e6 < imagenet["macs"] < 574e6


def test_describe_reads_a_genotype_file_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(published_genotype("PC_DARTS").to_dict()))
    assert main(["describe", "--genotype", str(path), "--dataset", "cifar10", "--channels", "16",
                 "--layers", "8"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "multiply-adds" in out


def test_describe_prints_the_auxiliary_heads_count_only_for_a_network_with_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["describe", "--genotype", "DARTS_V2", "--dataset", "cifar10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["parameters", "3,349,342"]
    assert lines[1].endswith("(3.35M, without the auxiliary head)")
    word, kind, count = lines[2].split()
    assert (word, kind) == ("with", "auxiliary") and int(count.replace(",", "")) > 3_349_342
    # NAS-Bench-201's networks have no auxiliary head: one count, said plainly.
    assert main(["describe", "--space", "nb201", "--arch", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                 "+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "parameters" and lines[1].endswith("M)")
    assert not any("auxiliary" in line for line in lines)
    assert lines[2].split()[0] == "multiply-adds"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "--genotype", "NOPE"], "unknown genotype 'NOPE'; published genotypes: "),
        (["describe", "--genotype", "missing.json"], "genotype file 'missing.json' does not exist"),
        (["describe", "--genotype", "DARTS", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["describe", "--space", "nope", "--genotype", "DARTS"], "unknown space 'nope'; choose one of"),
        (["search", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        # Inputs smaller than the network's downsampling, and a size the network cannot take.
        (["describe", "--space", "convnext", "--arch", "convnext_tiny", "--dataset", "digits"],
         "the 'convnext' network of convnext_tiny does not run on 8x8 inputs ("),
        (["describe", "--genotype", "DARTS", "--dataset", "imagenet", "--input-size", "8x8"],
         "does not run on 8x8 inputs ("),
        (["describe", "--space", "auto_deeplab", "--arch", "hnasnet", "--layers", "1"],
         "the 'auto_deeplab' network of hnasnet cannot be built as asked (the architecture's path has 12"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "--genotype", "DARTS", "--layers", "-1"],
         "argument --layers: must be 1 or more, got -1"),
        (["describe", "--genotype", "DARTS", "--channels", "0"], "argument --channels: must be 1 or more"),
        (["latency", "--space", "fbnet", "--dataset", "cifar10", "--validate", "1"],
         "argument --validate: must be 0 (none) or 2 or more, got 1"),
        (["report", "--top", "0"], "argument --top: must be 1 or more, got 0"),
    ],
)
def test_counts_out_of_range_are_refused_by_the_argument_parser_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative --layers was an IndexError from the network's code, --validate 1 a ValueError
    from the rank correlation after timing, --top 0 an empty table."""
    with pytest.raises(SystemExit) as exit_:  # raynas.cli.run turns it into the exit status
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raynas: error: {message}") and len(err.strip().splitlines()) == 1, err


def test_search_config_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    path = write_job(tmp_path, tiny_job(tmp_path))
    proc = run_cli("search", str(path), "--set", "train.epocs=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'train.epocs'; allowed: epochs" in proc.stderr
    assert "Traceback" not in proc.stderr

    job = tiny_job(tmp_path, data={"name": "cifar10", "path": str(tmp_path / "nowhere")})
    del job["data"]["limit"]
    proc = run_cli("search", str(write_job(tmp_path, job)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "data.path" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("job", "says"),
    [
        ("quickstart.yaml", "(supernet, held-out half)"),
        ("teg_nas_quickstart.yaml", "(untrained supernet, held-out half: this search trains no weights; "
                                    "`raynas train` retrains the genotype)"),
        ("evolution_quickstart.yaml", "(best candidate, scratch evaluator)"),
        ("fbnet_quickstart.yaml", "(the best of 2 architectures drawn from fbnet's distribution, "
                                  "retrained from scratch)"),
    ],
)
def test_the_answer_s_score_says_what_it_measures(job: str, says: str) -> None:
    # A training-free pruning's supernet keeps its random weights: its accuracy is near chance.
    from raynas.cli import scored_by
    from raynas.runs.jobs import load_job

    assert f"({scored_by(load_job(Path(__file__).parents[1] / 'jobs' / job))})" == says


# A script that runs the console script's entry point (or, with "main" first, `sys.exit(main())`)
# with a non-daemon thread still working, an idle thread pool, an exit handler, and an object only
# Python's finalization frees; the thread, the handler and the object leave a file beside OUT.
EXITING = """
import atexit, concurrent.futures, sys, threading, time
from pathlib import Path

out, entry, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]


class FreedAtFinalization:
    def __del__(self) -> None:
        out.with_suffix(".finalized").write_text("freed")


kept = FreedAtFinalization()
atexit.register(lambda: out.with_suffix(".atexit").write_text("ran"))


def late() -> None:
    time.sleep(0.5)
    out.with_suffix(".thread").write_text("joined")


threading.Thread(target=late).start()
idle = concurrent.futures.ThreadPoolExecutor(1)  # never shut down: Python's exit wakes its worker
idle.submit(time.sleep, 0).result()
sys.argv = ["raynas", *argv]
from raynas.cli import main, run

sys.exit(main()) if entry == "main" else run()
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["describe", "--space", "darts", "--arch", "DARTS_V2", "--dataset", "cifar10"], 0),
     (["search", "no-such-job.yaml"], 2), (["no-such-command"], 2)],
    ids=["describe", "bad-job", "bad-command"],
)
def test_the_console_script_exits_with_its_status_after_threads_and_exit_handlers_without_finalization(
    tmp_path: Path, argv: list[str], code: int
) -> None:
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "python"), "-c", EXITING, str(out), "run", *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr[-2000:]
    assert out.with_suffix(".thread").read_text() == "joined"  # waited for, as Python does
    assert out.with_suffix(".atexit").read_text() == "ran"
    assert not out.with_suffix(".finalized").exists()  # Python's finalization skipped
    if code == 0:
        assert "DARTS_V2" in done.stdout
    else:
        assert len(done.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in done.stderr


def test_an_exit_handler_that_never_returns_ends_after_the_exit_bound_with_the_commands_status(
    tmp_path: Path,
) -> None:
    """A library's exit handler that never returns (tensorboardX's joined a thread that never
    ended) held the finished command for good; it ends EXIT_SECONDS later (1 s here) with its own
    status, its output written, and one line saying so."""
    script = (
        "import atexit, sys, threading\n"
        "import raynas.cli as cli\n"
        "cli.EXIT_SECONDS = 1.0\n"
        "atexit.register(threading.Event().wait)\n"
        "sys.argv = ['raynas', 'describe', '--space', 'darts', '--arch', 'DARTS_V2',\n"
        "            '--dataset', 'cifar10']\n"
        "cli.run()\n"
    )
    done = subprocess.run([str(BIN / "python"), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DARTS_V2" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "raynas: the command had ended, but its exit still waited on a thread or an exit handler after 1 s; "
        "ended without it")


def test_without_the_console_script_python_s_finalization_frees_what_it_holds(tmp_path: Path) -> None:
    # The check above can fail: the same script through `sys.exit(main())` is finalized.
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "python"), "-c", EXITING, str(out), "main", "no-such-command"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert out.with_suffix(".finalized").read_text() == "freed"


PRESSES = """
import os, signal, sys, time
from raynas import cli

signal.signal(signal.SIGINT, cli._stop)  # as the console script installs it
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("stopping", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)  # (a Python handler runs between bytecodes: here, at once)
print("still stopping", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("not ended", flush=True)
"""


def test_ctrl_c_stops_the_command_a_second_lets_the_stop_finish_and_a_third_ends_it_at_once(
    tmp_path: Path,
) -> None:
    """The console script's Ctrl-C (and SIGTERM) handler, with real signals: the first press is a
    KeyboardInterrupt, the second one line while the stop goes on, the third ends the process
    with status 130 and no traceback (tests/test_quiet_failures.py presses twice during a real
    search's stop)."""
    done = subprocess.run([str(BIN / "python"), "-c", PRESSES], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-2000:]
    assert done.stdout == "stopping\nstill stopping\n"
    assert done.stderr == ("raynas: still stopping (the MLflow run's end, Ray's processes); press "
                           "Ctrl-C again to end at once\n")


SWALLOWING = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from raynas import cli

signal.signal(signal.SIGINT, cli._stop)  # as the console script installs it
try:
    import swallowing  # Ctrl-C while it is imported
    time.sleep(5)
    print("not stopped", flush=True)
except KeyboardInterrupt:  # (where it lands after the import is no matter: told once it has ended)
    module = sys.modules.get("swallowing")
    print("stopped; imported:", module is not None, "swallowed:", getattr(module, "swallowed", None),
          flush=True)
"""

# A module whose import catches every error, as torch's extension does while it initialises
# (its own and numpy's): a KeyboardInterrupt raised in it would be lost.
SWALLOWING_MODULE = """
import os, signal, time
swallowed = False
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
except BaseException:
    swallowed = True
"""


def test_ctrl_c_while_a_module_is_imported_stops_the_command_once_the_import_is_done(
    tmp_path: Path,
) -> None:
    """Found by hand: `raynas search` interrupted about half a second after it started, while
    torch was being imported, went on to its end, or failed later with a RecursionError from
    the numpy the interrupt left half made. The handler now waits for the import to end; here
    with a module that swallows the interrupt deterministically."""
    (tmp_path / "swallowing.py").write_text(SWALLOWING_MODULE)
    done = subprocess.run([str(BIN / "python"), "-c", SWALLOWING, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "stopped; imported: True swallowed: False\n", done.stdout
    # Pressed again while the import goes on (one that would take long), it stops there.
    (tmp_path / "swallowing.py").write_text(SWALLOWING_MODULE + "os.kill(os.getpid(), signal.SIGINT)\n"
                                            "time.sleep(5)\n")
    done = subprocess.run([str(BIN / "python"), "-c", SWALLOWING, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "stopped; imported: False swallowed: None\n", done.stdout  # in the import



@pytest.mark.parametrize(("command", "line"), [
    ("search", "raynas: interrupted; run the same command again to resume"),
    ("describe", "raynas: interrupted"),  # nothing to resume
])
def test_an_interrupted_command_says_to_run_it_again_only_where_it_resumes(
    command: str, line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import raynas.cli as cli

    def interrupted(args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"_{command}", interrupted)
    argv = ["search", "jobs/quickstart.yaml"] if command == "search" else ["describe", "--genotype", "DARTS"]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == line + "\n"
