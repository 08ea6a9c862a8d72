"""The driver of sampling searches: a controller asks for candidates, an evaluator scores them.

Phases:

1. ``supernet`` (only with the one-shot ``supernet`` evaluator): ``train.epochs`` epochs of
   single-path training, each step on the path the strategy samples (uniform for SPOS, the
   policy for ENAS); strategies that learn during training (ENAS) are asked for
   ``evaluations_per_epoch`` candidates after every epoch.
2. ``search``: ask/tell until the strategy is done, ``execution.concurrency`` candidates at a
   time (supernet replicas or evaluator actors), or as Ray Tune trials under ASHA / HyperBand /
   PBT when the evaluator trains candidates (``evaluator: scratch`` with ``tune.enabled``).
3. ``retrain``: the best ``final.top`` candidates trained from scratch (``final``'s budget).

Every event (a candidate asked, a result, a supernet epoch's paths, a phase begun) goes to the
search's journal (:mod:`raynas.runs.journal`) as it happens, and every result to MLflow and the
results store; the checkpoint keeps the controller's state and how much of the journal it covers,
written after every supernet epoch, at every phase and every :data:`SNAPSHOT_SECONDS` of the
search. Running the same job again loads the checkpoint and replays the journal after it: the
controller is asked and told exactly what it was, the candidates that were in flight are
evaluated again under their trial ids, and nothing already evaluated is evaluated again. A lost
evaluator actor is replaced by the pool, a lost controller actor rebuilt the same way from the
checkpoint and the journal, without anyone running the command again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raynas import storage
from raynas.config import SearchConfig
from raynas.errors import RaynasError, WorkerLostError
from raynas.execution.controller import RemoteController, build_controller, start_controller
from raynas.execution.pool import start_pool
from raynas.execution.ray_actors import init_ray, ray_logs
from raynas.runs.common import (
    CandidateCosts,
    SearchResult,
    check_networks_run,
    example_input,
    final_evaluator,
    job_space,
    log_cell_shapes,
    open_tracker_while,
    read_checkpoint,
    read_prior,
    result_costs,
    retrain_size,
    run_path,
    score_text,
    scored_size,
    searched_network,
    start_run,
    timed,
)
from raynas.runs.journal import SNAPSHOT_SECONDS, Journal, journal_location
from raynas.spaces.drawing import picture
from raynas.tracking import MlflowTracker
from raynas.tracking.recorder import SearchRecorder
from raynas.train.checkpoint import load_checkpoint, previous_checkpoint, save_checkpoint
from raynas.types import (
    Architecture,
    EpochReport,
    EvalResult,
    best_at_equal_budget,
)

log = logging.getLogger(__name__)

PHASES = ("supernet", "search", "retrain", "done")


class SamplingSearch:
    """One sampling search: its controller, its journal, and the state derived from them.

    Args:
        config: The validated job (a sampling strategy and an evaluator).
        journal: The search's journal (read when it is opened: a resumed search's events).
        echo: Where progress lines go.
    """

    def __init__(
        self, config: SearchConfig, *, journal: Journal, echo: Callable[[str], None] = print
    ) -> None:
        assert config.evaluator is not None
        self.config = config
        self.journal = journal
        self.echo = echo
        self.one_shot = config.evaluator.name == "supernet"
        # Candidates train as Tune trials: from scratch, or fine-tuned from the supernet's weights.
        self.use_tune = config.tune.enabled and config.execution.backend == "ray" and (
            config.evaluator.name == "scratch" or (self.one_shot and config.evaluator.config.epochs >= 1)
        )
        build_controller(config).check_search(supernet_epochs=config.train.epochs if self.one_shot else 0)
        # Not waited for: the evaluators' actors start beside it (the first call waits).
        self.strategy: Any = self._new_controller(None, wait=False)
        self.phase = "supernet" if self.one_shot else "search"
        self.epoch = 0  # supernet epochs finished
        self.trials = 0  # trial ids handed out
        self.results: list[EvalResult] = []  # every search-phase evaluation, in the order told
        self.retrained: list[EvalResult] = []
        self.retrained_networks: dict[str, Any] = {}  # trained networks of this run's retrainings, by key
        self.pending: dict[str, Architecture] = {}  # asked and not told, in ask order
        self.resubmit: list[tuple[str, Architecture]] = []  # in flight at a crash: evaluate again
        # Supernet epochs the journal shows begun after the checkpoint resumed from, by epoch: the
        # paths each sampled and the results told during it (trained again on the same paths).
        self.redo: dict[int, tuple[list[Architecture], int]] = {}
        self.epoch_told = 0  # results told in the supernet epoch in progress
        self.restarts = 0  # controller actors rebuilt
        self.checkpoint = ""  # where snapshot() writes (set by the driver)
        self.checkpointed = False  # whether the checkpoint is this search's (written, or resumed from)
        self._snapshot_at = time.monotonic()
        self._diverged = False

    def _new_controller(self, state: dict[str, Any] | None, *, wait: bool = True) -> Any:
        """The strategy in this process, or (Ray) in an actor of its own placed by
        ``execution.controller_resources`` (started, not waited for, without ``wait``); loaded
        with ``state``."""
        if self.config.execution.backend == "ray":
            init_ray(self.config.execution)
            return start_controller(self.config, state, wait=wait)
        strategy = build_controller(self.config)
        if state is not None:
            strategy.load_state_dict(state)
        return strategy

    # -- events: each is journaled as it happens ---------------------------------------------

    def ask(self) -> tuple[str, Architecture] | None:
        """The next candidate to evaluate and its trial id: one in flight at a crash first."""
        if self.resubmit:
            return self.resubmit.pop(0)
        arch = self._controller_call(lambda: self.strategy.ask())
        if arch is None:
            return None
        self.trials += 1
        trial = f"{self.trials:05d}"
        self.asked(trial, arch)
        return trial, arch

    def asked(self, trial: str, arch: Architecture) -> None:
        """Note that ``trial`` evaluates ``arch`` (Tune's searcher reports its own asks here)."""
        self.journal.append({"e": "ask", "trial": trial, "arch": arch.to_json()})
        self.pending[trial] = arch

    def tell(self, result: EvalResult, *, told: bool = False) -> None:
        """Record a search-phase result and tell the controller (unless Tune's searcher ``told``)."""
        self.journal.append({"e": "result", "phase": "search", "result": result.to_dict()})
        _settle(self.pending, result)
        self.results.append(result)
        self.epoch_told += 1
        if not told:
            # A controller rebuilt from the journal (its actor lost) has been told this result.
            self._controller_call(lambda: self.strategy.tell(result), retry=False)

    def sample_paths(self, n: int) -> list[Architecture]:
        """The paths of the next supernet epoch's ``n`` steps."""
        paths = self._controller_call(lambda: self.strategy.sample_paths(n))
        self.journal.append({"e": "paths", "epoch": self.epoch, "n": n})
        self.epoch_told = 0
        return paths

    def epoch_paths(self, n: int) -> list[Architecture]:
        """The paths of supernet epoch :attr:`epoch`: those the journal recorded for it before a
        crash (its results told then stand), else ``n`` new ones."""
        if self.epoch in self.redo:
            paths, self.epoch_told = self.redo.pop(self.epoch)
            return paths
        return self.sample_paths(n)

    def retrained_one(self, result: EvalResult) -> None:
        """Record a final retraining (not told to the controller)."""
        self.journal.append({"e": "result", "phase": "retrain", "result": result.to_dict()})
        self.retrained.append(result)

    def begin(self, phase: str) -> None:
        """Enter ``phase`` (journaled, and checkpointed)."""
        self.phase = phase
        self.redo = {}
        self.journal.append({"e": "phase", "phase": phase})

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Phase, counters and the controller's state (plain data; results live in the journal)."""
        return {
            "phase": self.phase, "epoch": self.epoch, "trials": self.trials,
            "strategy": self._controller_call(lambda: self.strategy.state_dict()),
        }

    def restore(self, state: dict[str, Any], seq: int) -> None:
        """Continue from a checkpoint's ``state`` covering the first ``seq`` journal events: the
        results come from the journal, and the controller replays what happened after ``seq``.
        Candidates asked and never told are evaluated again (:attr:`resubmit`), under their ids."""
        self.phase, self.epoch, self.trials = state["phase"], int(state["epoch"]), int(state["trials"])
        self.results, self.retrained, self.pending = [], [], {}
        for event in self.journal.events:
            if event["e"] == "ask":
                self.pending[event["trial"]] = Architecture.from_json(event["arch"])
                if event["trial"].isdigit():
                    self.trials = max(self.trials, int(event["trial"]))
            elif event["e"] == "result":
                result = EvalResult.from_dict(event["result"])
                if event["phase"] == "search":
                    _settle(self.pending, result)
                (self.retrained if event["phase"] == "retrain" else self.results).append(result)
        self.redo = self._replay(state["strategy"], seq)
        self.resubmit = list(self.pending.items())
        self.checkpointed = True

    def _replay(
        self, strategy_state: dict[str, Any] | None, seq: int
    ) -> dict[int, tuple[list[Architecture], int]]:
        """Load the controller's checkpointed state (None: a new controller as it starts) and make
        again every call it got after the checkpoint (events ``seq`` on): it ends as it was,
        having asked and been told the same.

        Returns:
            The supernet epochs begun after the checkpoint (usually the one in progress at the
            crash; more when an unreadable checkpoint gave way to the version before it): each
            one's paths and the number of results told during it. While any is to be trained
            again, :attr:`phase` stays the checkpoint's.
        """
        in_flight: dict[str, Architecture] = {}  # at the checkpoint: asked, not yet told
        for event in self.journal.events[:seq]:
            if event["e"] == "ask":
                in_flight[event["trial"]] = Architecture.from_json(event["arch"])
            elif event["e"] == "result" and event["phase"] == "search":
                _settle(in_flight, EvalResult.from_dict(event["result"]))
        epochs: dict[int, tuple[list[Architecture], int]] = {}
        current: int | None = None  # the epoch whose results are being told
        if strategy_state is not None:
            self.strategy.load_state_dict(strategy_state)
        for arch in in_flight.values():  # a loaded controller hands its in-flight candidates back
            self._check_same(self.strategy.ask(), arch)
        for event in self.journal.events[seq:]:
            kind = event["e"]
            if kind == "ask":
                self._check_same(self.strategy.ask(), Architecture.from_json(event["arch"]))
            elif kind == "result" and event["phase"] == "search":
                self.strategy.tell(EvalResult.from_dict(event["result"]))
                if current is not None:
                    paths, told = epochs[current]
                    epochs[current] = (paths, told + 1)
            elif kind == "paths":
                current = int(event["epoch"])
                epochs[current] = (self.strategy.sample_paths(int(event["n"])), 0)
            elif kind == "phase":
                current = None
                if not epochs:
                    self.phase = event["phase"]
        return epochs

    def _check_same(self, got: Architecture | None, recorded: Architecture) -> None:
        if (got is None or got.key() != recorded.key()) and not self._diverged:
            self._diverged = True
            self.echo(
                f"the controller of {self.config.name!r} asks differently on replay ({recorded.key()} "
                "was recorded); the search goes on from the recorded candidates, not bit for bit"
            )

    def _controller_call(self, call: Callable[[], Any], *, retry: bool = True) -> Any:
        """``call()`` on the controller; a lost controller actor is rebuilt from the checkpoint
        and the journal (a new one lost while it is rebuilt, again), then ``call`` is made again
        (``retry``) or was replayed already."""
        while True:
            try:
                return call()
            except WorkerLostError as exc:
                lost = exc
            while lost is not None:
                self.restarts += 1
                if self.restarts > self.config.execution.max_restarts:
                    raise lost
                lost = self._rebuild_controller(lost)
            if not retry:
                return None

    def _rebuild_controller(self, lost: WorkerLostError) -> WorkerLostError | None:
        """A new controller in the lost one's place, as it was: None, or the loss of the new one."""
        since = "the checkpoint" if self.checkpointed else "its start"
        self.echo(f"{lost.reason}: rebuilding the controller from {since} and the journal; "
                  f"Ray's logs are in {ray_logs()}")
        if isinstance(self.strategy, RemoteController):
            self.strategy.close()
        # Lost before the search's first checkpoint (the controller's state is asked for it): a
        # new controller is the lost one as it started, and the journal replays the rest. A
        # checkpoint there then is an earlier search's (--fresh).
        state, seq = None, 0
        if self.checkpointed:
            prior = read_checkpoint(self.checkpoint)
            state, seq = prior["state"]["strategy"], int(prior["seq"])
        try:
            self.strategy = self._new_controller(None)
            self._replay(state, seq)
        except WorkerLostError as exc:
            return exc
        return None

    def snapshot(self, run_id: str, *, finished: bool = False) -> None:
        """Checkpoint the state and the journal position (the journal made durable first)."""
        self.journal.sync()
        state = self.state_dict()
        save_checkpoint(
            {"config": self.config.to_dict(), "run_id": run_id, "state": state, "seq": self.journal.length,
             "finished": finished},
            self.checkpoint,
        )
        self.checkpointed = True
        self._snapshot_at = time.monotonic()

    def snapshot_due(self) -> bool:
        """Whether the search phase has gone :data:`SNAPSHOT_SECONDS` without a checkpoint."""
        return time.monotonic() - self._snapshot_at >= SNAPSHOT_SECONDS


def _settle(pending: dict[str, Architecture], result: EvalResult) -> None:
    """Take ``result``'s candidate off ``pending``: by trial id, else (a trial id the executor
    chose, such as a PBT copy's) the earliest pending ask of the same architecture."""
    if pending.pop(result.trial_id, None) is not None:
        return
    key = result.architecture.key()
    for trial, arch in pending.items():
        if arch.key() == key:
            del pending[trial]
            return


def run_sampling_search(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> SearchResult:
    """Run (or resume) the sampling search of ``config``."""
    started = time.perf_counter()
    checkpoint, supernet_file = run_path(config, "checkpoint.pt"), run_path(config, "supernet.pt")
    prior = read_prior(checkpoint, config, fresh=fresh)
    if prior is not None and "seq" not in prior:
        from raynas.errors import ConfigError

        raise ConfigError(
            f"{checkpoint} was written by an older raynas (no journal); pass --fresh to start over"
        )
    location = journal_location(storage.join(config.tracking.output_dir, config.name))
    if prior is None:
        storage.remove(location)  # a fresh search: the journal of an earlier one goes
    journal = Journal(location)
    search = SamplingSearch(config, journal=journal, echo=echo)
    search.checkpoint = checkpoint
    check_networks_run(config, scored_size(config))

    def restore_supernet() -> dict[str, Any] | None:
        return supernet_at(supernet_file, search.epoch)

    # Every candidate is recorded with the size of the network its evaluator scored; the recorder
    # checks the results store.
    costs = CandidateCosts(config, size=scored_size(config))
    tracker, pool, recorder = open_tracker_while(
        config,
        lambda: start_pool(config, restore=restore_supernet, echo=echo)
        if not search.use_tune or search.one_shot else None,
        then=lambda tracker: SearchRecorder(
            config=config, tracker=tracker, node=config.execution.backend,
            costs=costs.complete,
            draw=functools.partial(picture, job_space(config)),
        ),
    )
    try:
        run_id = start_run(tracker, config, checkpoint, prior, fresh=fresh)
        recorder.opened(run_id)
        if prior is None:
            search.snapshot(run_id)  # from now on there is always a checkpoint to resume from
        else:
            search.restore(prior["state"], int(prior["seq"]))
            recorder.backfill([*search.results, *search.retrained])  # recorded once, whatever the crash
            state = restore_supernet()
            if pool is not None and state is not None:
                pool.load_state_dict(state)
            echo(
                f"Resuming {config.name!r} in phase {search.phase!r} with {len(search.results)} "
                f"candidates evaluated ({len(search.resubmit)} in flight, evaluated again), from {checkpoint}"
            )
        where = pool.describe_location() if pool is not None else "Ray Tune trials"
        if isinstance(search.strategy, RemoteController):
            where += f", controller on node {search.strategy.node_id()[:12]}"
        echo(
            f"Searching {config.space.name} with {config.strategy.name} ({config.evaluator.name} "
            f"evaluator) on {config.data.name} in {where}; MLflow run {run_id}"
        )

        def record(result: EvalResult, *, told: bool = False) -> None:
            search.tell(result, told=told)
            recorder.candidate(result, step=len(search.results) - 1)
            echo(
                f"candidate {len(search.results):>4}  {result.objective} {score_text(result):>7}  "
                f"budget {result.budget:g}{'  stopped early' if result.stopped_early else ''}  "
                f"{result.architecture}"
            )
            if search.phase == "search" and search.snapshot_due():
                search.snapshot(run_id)

        if search.phase == "supernet":
            assert pool is not None
            _train_supernet(search, pool, tracker, record, supernet_file, run_id)
        if search.phase == "search":
            if search.use_tune:
                if pool is not None:  # the supernet is trained and saved: its actors are done
                    pool.close()
                    pool = None
                inherited = supernet_file if search.one_shot else None
                _search_with_tune(search, record, run_path(config, "tune"), inherited=inherited)
            else:
                assert pool is not None
                pool.sync_replicas()
                _search(search, pool, record)
            search.begin("retrain")
            search.snapshot(run_id)
        if search.phase == "retrain":
            _retrain(search, recorder, run_id)
            search.begin("done")
        best = _final(search)
        # The result's size is that of the network that scored it: retrained at final's size, or
        # as the evaluator built it; that network is the run's registered model.
        size = retrain_size(config) if search.retrained else scored_size(config)
        sizes = result_costs(config, best.architecture, size=size)
        params, params_cifar = int(sizes["params"]), int(sizes["paper_params"])
        summary = {
            **best.metrics, **sizes, "candidates": len(search.results),
            "stopped_early": sum(r.stopped_early for r in search.results),
        }
        _log_pareto(search, tracker, costs)
        found = [r.architecture for r in search.results]
        log_cell_shapes(tracker, job_space(config), found, best.architecture)
        network = search.retrained_networks.get(best.architecture.key())
        untrained = network is None
        if network is None:
            network = searched_network(config, best.architecture, size=size)
        recorder.finish(
            EpochReport(epoch=search.epoch, metrics=best.metrics, architecture=best.architecture),
            summary, weights_history=[], trained=not untrained, example=example_input(config),
            network=network,
            picture=picture(job_space(config), best.architecture) if tracker.pictures else None,
        )
        search.snapshot(run_id, finished=True)
    except BaseException as error:
        recorder.abort()
        tracker.fail(error)
        raise
    finally:
        journal.close()
        if pool is not None:
            pool.close()
        if isinstance(search.strategy, RemoteController):
            search.strategy.close()
    return SearchResult(
        architecture=best.architecture, metrics=best.metrics, params=params, params_cifar10=params_cifar,
        run_id=run_id, run_link=tracker.run_link(), checkpoint=checkpoint,
        seconds=time.perf_counter() - started, macs=int(sizes.get("macs", 0)),
        paper_macs=int(sizes.get("paper_macs", 0)),
    )


def supernet_at(supernet_file: str, epoch: int) -> dict[str, Any] | None:
    """The supernet's state after ``epoch`` epochs: ``supernet_file`` or the version before it
    (a checkpoint that gave way to its previous version names the supernet's previous version);
    None for epoch 0, which starts from the seeded initial weights.

    Raises:
        RaynasError: Neither file holds that epoch's supernet.
    """
    if epoch == 0:
        return None
    for path in (supernet_file, previous_checkpoint(supernet_file)):
        if not storage.exists(path):
            continue
        try:
            state = load_checkpoint(path)
        except Exception:  # torn or corrupt: the other version may hold the epoch
            continue
        if int(state.get("search_epoch", epoch)) == epoch:  # absent: written before it was recorded
            return state
    raise RaynasError(
        f"no readable supernet of epoch {epoch} at {supernet_file} or the version before it, which "
        "the search's checkpoint resumes from; pass --fresh to start over"
    )


def search_state(checkpoint: str) -> dict[str, Any]:
    """What a sampling search has recorded, read from its checkpoint and its journal beside it:
    ``phase`` and ``epoch`` (as of the checkpoint), ``finished``, and every ``results`` and
    ``retrained`` evaluation (as :meth:`EvalResult.to_dict`), in the order they were told."""
    prior = load_checkpoint(checkpoint)
    folder = checkpoint.rsplit("/", 1)[0] if storage.is_s3(checkpoint) else str(Path(checkpoint).parent)
    events = Journal(journal_location(folder)).events
    return {
        "phase": prior["state"]["phase"], "epoch": prior["state"]["epoch"], "finished": prior["finished"],
        "results": [e["result"] for e in events if e["e"] == "result" and e["phase"] == "search"],
        "retrained": [e["result"] for e in events if e["e"] == "result" and e["phase"] == "retrain"],
    }


def _train_supernet(
    search: SamplingSearch, pool: Any, tracker: MlflowTracker, record: Callable[[EvalResult], None],
    supernet_file: str, run_id: str,
) -> None:
    config = search.config
    steps = pool.steps_per_epoch
    per_epoch = search._controller_call(lambda: search.strategy.evaluations_per_epoch)
    while search.epoch < config.train.epochs:
        start = time.perf_counter()
        # An epoch interrupted by a crash is trained again on the paths it had sampled, from the
        # supernet of the epoch before: the same weights, so its results already told stand.
        paths = search.epoch_paths(steps)
        metrics = pool.train_epoch(paths)
        if per_epoch:
            pool.sync_replicas()
            _search(search, pool, record, limit=per_epoch - search.epoch_told)
        seconds = time.perf_counter() - start
        search.epoch += 1
        # Before the small checkpoint points past it; with the epoch it holds (supernet_at).
        save_checkpoint({**pool.state_dict(), "search_epoch": search.epoch}, supernet_file)
        search.snapshot(run_id)
        best = search._controller_call(lambda: search.strategy.best())
        if best is not None:
            metrics["best_" + best.objective] = best.score
        tracker.log_epoch(EpochReport(
            epoch=search.epoch - 1, metrics=metrics, architecture=paths[-1], seconds=seconds,
        ))
        search.echo(
            f"supernet epoch {search.epoch:>3}/{config.train.epochs}  train loss "
            f"{metrics['train_loss']:.3f} acc {metrics['train_acc']:6.1%}  {seconds:.0f}s"
        )
    search.begin("search")
    search.snapshot(run_id)


def _search(search: SamplingSearch, pool: Any, record: Callable[[EvalResult], None],
            limit: int | None = None) -> None:
    """Ask/tell with up to ``pool.capacity`` candidates in flight; ``limit`` evaluations at most.
    Candidates in flight at a crash go first, under their trial ids."""
    told = 0
    while limit is None or told < limit:
        while pool.in_flight < pool.capacity and (limit is None or told + pool.in_flight < limit):
            asked = search.ask()
            if asked is None:
                break
            trial, arch = asked
            pool.submit(arch, trial)
        if pool.in_flight == 0:
            if limit is not None or search._controller_call(lambda: search.strategy.done):
                return
            raise RaynasError(
                f"strategy {search.config.strategy.name!r} waits for results but none are in flight"
            )
        record(pool.next_result())
        told += 1


def _search_with_tune(
    search: SamplingSearch, record: Callable[[EvalResult], None], storage_path: str,
    inherited: str | None = None,
) -> None:
    from raynas.execution.tune import last_pbt_state, last_trial_state, run_tune_search

    # In flight when the driver died: each goes on from its trial's last epoch (under PBT, from
    # the last checkpoint of the trial that trained it in the latest round).
    name = search.config.name
    resubmit = [
        (arch, last_pbt_state(storage_path, name, arch.key()) if search.config.tune.scheduler == "pbt"
         else last_trial_state(storage_path, name, trial))
        for trial, arch in search.resubmit
    ]
    search.resubmit = []
    run_tune_search(
        search.config, search.strategy, storage_path=storage_path,
        on_result=lambda result: record(result, told=True), on_ask=search.asked, resubmit=resubmit,
        inherited=inherited, echo=search.echo,
    )


def _retrain(search: SamplingSearch, recorder: SearchRecorder, run_id: str) -> None:
    """Train the best ``final.top`` candidates from scratch with ``final``'s budget; each is
    recorded like a candidate (trial ``retrain-<its search trial>``)."""
    config, final = search.config, search.config.final
    seen: set[str] = set()
    chosen = []
    # The strategy ranks the results its answer comes from (ENAS: only those derived from its
    # trained policy); candidates Tune stopped early are ranked with the others at equal budget.
    for result in search._controller_call(lambda: search.strategy.final_results()):
        if result.architecture.key() not in seen:
            seen.add(result.architecture.key())
            chosen.append(result)
    done = {r.architecture.key() for r in search.retrained}
    left = [result for result in chosen[: final.top] if result.architecture.key() not in done]
    if not left:  # (nothing to retrain: no dataset opened, as a table's search names none)
        return
    evaluator = final_evaluator(config)
    sizes = CandidateCosts(config, size=retrain_size(config))  # final's size
    for result in left:
        started = time.time()
        retrained = evaluator.evaluate(result.architecture, trial_id=f"retrain-{result.trial_id}")
        retrained = sizes.complete(timed(retrained, started))
        if evaluator.network is not None:  # registered if it is the search's answer
            search.retrained_networks[result.architecture.key()] = evaluator.network.cpu().eval()
        search.retrained_one(retrained)
        search.snapshot(run_id)
        recorder.candidate(retrained, step=len(search.results) + len(search.retrained) - 1)
        search.echo(
            f"retrained {result.architecture.key()}: {retrained.objective} {score_text(retrained)} "
            f"(searched {score_text(result)})"
        )


def _log_pareto(search: SamplingSearch, tracker: MlflowTracker, sizes: CandidateCosts) -> None:
    """``pareto.png``: every candidate's score against its network's parameters (as its
    evaluator built it: the size recorded with it), with the Pareto front."""
    if not tracker.pictures:
        return
    from raynas.tracking.plots import plot_pareto  # matplotlib: only where pictures are drawn

    costs, scores = [], []
    for result in search.results:
        if result.score == float("-inf"):
            continue
        costs.append(result.metrics.get("params") or sizes(result.architecture)["params"])
        scores.append(result.score)
    if costs:
        tracker.log_figure(
            plot_pareto(costs, scores, score_label=search.results[0].objective,
                        title=f"{search.config.name}: {len(costs)} candidates"),
            "pareto.png",
        )


def _final(search: SamplingSearch) -> EvalResult:
    """The search's answer: the best retrained candidate if any were retrained, else the best of
    the strategy's :meth:`~raynas.strategies.sampling.SamplingStrategy.final_results` (at equal
    budget: :func:`compare_at_equal_budget`; ENAS: its derived architecture)."""
    if search.retrained:
        best = best_at_equal_budget(search.retrained)
    else:
        ranked = search._controller_call(lambda: search.strategy.final_results())
        best = ranked[0] if ranked else None
    if best is None:
        raise RaynasError(f"search {search.config.name!r} evaluated no candidate")
    return best


__all__ = ["PHASES", "SamplingSearch", "run_sampling_search", "search_state"]
