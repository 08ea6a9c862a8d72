"""The gradient strategies and their networks as their papers and official code do them (issue 15,
docs/fidelity.md): ADARTS's channel alignment."""

from __future__ import annotations

import torch

from raynas.ops.attention import AttentionPartialMixedOp


def _fixed_attention(op: AttentionPartialMixedOp, bias: list[float]) -> torch.Tensor:
    """Make the op's attention ignore its input: sigmoid(bias) per channel."""
    last = op.attention.mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))
    return torch.sigmoid(torch.tensor(bias))


def test_adarts_edges_add_aligned_channels() -> None:
    """Two edges into one node whose attentions choose different channels: with identity as the
    only candidate, each edge's output is its attention-weighted input channel for channel, so
    the node's sum is x * (s1 + s2) at every channel (the chosen channels concatenated first
    would put channel 3 of one edge onto channel 0 of the other)."""
    torch.manual_seed(0)
    edges = [
        AttentionPartialMixedOp(channels=4, stride=1, primitives=("skip_connect",), k=2) for _ in range(2)
    ]
    s1 = _fixed_attention(edges[0], [-2.0, -1.0, 2.0, 3.0])  # chooses channels 2 and 3
    s2 = _fixed_attention(edges[1], [3.0, 2.0, -1.0, -2.0])  # chooses channels 0 and 1
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)  # (B, C, H, W)
    w = torch.ones(1)
    assert edges[0].select(x)[1].tolist() == [2, 3] and edges[1].select(x)[1].tolist() == [0, 1]
    outs = [edge(x, w) for edge in edges]
    torch.testing.assert_close(outs[0], x * s1[None, :, None, None])
    torch.testing.assert_close(outs[1], x * s2[None, :, None, None])
    node = outs[0] + outs[1]
    torch.testing.assert_close(node, x * (s1 + s2)[None, :, None, None])
    # the fused form (edges leaving one state computed together) aligns them the same way
    fused = AttentionPartialMixedOp.forward_shared(x, edges, [w, w])
    for a, b in zip(fused, outs, strict=True):
        torch.testing.assert_close(a, b)
