"""What runs a job: load it against the registries, drive a search (gradient or sampling, once or
per seed), retrain a found architecture, report on the results.

- :mod:`.jobs`: job files loaded and checked against the registries;
- :mod:`.search`: the entry point (:func:`run_search`, :func:`run_seeds`);
- :mod:`.gradient`: the gradient driver, with :mod:`.supernet_worker` the work it runs;
- :mod:`.sampling`: the sampling driver (controller, evaluator pool or Tune, final retraining);
- :mod:`.retrain`: retraining and transfer (``raynas train``);
- :mod:`.report`: ``raynas report``;
- :mod:`.common`: what the drivers share (the result record, run paths, resume, network sizes).
"""

from raynas.runs.common import SearchResult
from raynas.runs.jobs import load_job, load_retrain_job, parse_job, parse_retrain_job
from raynas.runs.retrain import RetrainResult, run_retrain, run_retrain_job
from raynas.runs.search import run_search, run_seeds

__all__ = [
    "RetrainResult", "SearchResult", "load_job", "load_retrain_job", "parse_job", "parse_retrain_job",
    "run_retrain", "run_retrain_job", "run_search", "run_seeds",
]
