"""What the REINFORCE controllers share (ENAS, Pham et al. 2018; EPNAS, Zhou et al. 2019): one
decision of an autoregressive policy, sampled or scored."""

from __future__ import annotations

import torch


def choose(
    log_p: torch.Tensor, actions: torch.Tensor | None, t: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The option of decision ``t``, drawn from the policy or, when scoring, taken from ``actions``
    (teacher forcing), and its log-probability.

    Args:
        log_p: (B, options) the policy's log-probabilities for this decision.
        actions: (B, decisions) the options to score, or None to sample.
        t: The decision's index among those emitted.
        generator: The random stream samples are drawn from.

    Returns:
        The options (B,) and their log-probabilities (B,).
    """
    if actions is None:
        a = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)  # (B,)
    else:
        a = actions[:, t]
    return a, log_p.gather(1, a[:, None]).squeeze(1)
