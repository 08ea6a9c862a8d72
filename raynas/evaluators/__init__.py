"""How a candidate is scored, all in the ``EVALUATORS`` registry.

An evaluator turns an architecture into an :class:`raynas.types.EvalResult`:

- ``supernet``: inherited weights of a one-shot supernet trained on sampled single paths, with
  BatchNorm statistics recalibrated per candidate (SPOS, ENAS, random search with weight sharing);
- ``scratch``: a short training of the stand-alone network from scratch, epoch by epoch, so Ray
  Tune's schedulers can stop it early;
- training-free proxies register here too: a class built with ``(config, search=...)`` whose
  ``evaluate(arch, trial_id=...)`` returns an EvalResult with ``budget=0``.
"""

from raynas.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")

from raynas.evaluators import scratch, supernet  # noqa: E402, F401

__all__ = ["EVALUATORS"]
