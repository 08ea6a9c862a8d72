"""How a candidate is scored, all in the ``EVALUATORS`` registry.

An evaluator turns an architecture into an :class:`raynas.types.EvalResult`:

- ``supernet``: inherited weights of a one-shot supernet trained on sampled single paths, with
  BatchNorm statistics recalibrated per candidate (SPOS, ENAS, random search with weight sharing);
- ``scratch``: a short training of the stand-alone network from scratch, epoch by epoch, so Ray
  Tune's schedulers can stop it early;
- ``language_model``: a recurrent cell's language model trained from scratch as DARTS's
  ``rnn/train.py`` trains it, scored by validation perplexity (how DARTS chooses among its cells);
- ``morphism``: the same training, from the parent's weights carried through the network
  morphisms that grew the candidate (Auto-Keras);
- ``training_free``: a zero-cost proxy of the untrained network on one mini-batch (``proxy``:
  NASWOT's ``naswot``, TE-NAS's ``ntk`` and ``linear_regions``, TEG-NAS's ``te_nas``),
  ``budget=0`` (with ``benchmark``, each candidate also records NAS-Bench-201's accuracies of its cell);
- ``nb201_table``: NAS-Bench-201's own accuracy of a cell, read from the benchmark's release, no
  training (the benchmark's baselines; ``raynas.evaluators.nb201_table``).

Any class built with ``(config, search=...)`` whose ``evaluate(arch, trial_id=...)`` returns an
EvalResult can register here.
"""

from raynas.evaluators import (  # noqa: F401
    language_model,
    morphism,
    nb201_table,
    scratch,
    supernet,
    training_free,
)
from raynas.evaluators.registry import EVALUATORS

__all__ = ["EVALUATORS"]
