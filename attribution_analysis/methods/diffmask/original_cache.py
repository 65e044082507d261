"""The explained model's original forward pass, kept per example across DIFFMASK's epochs.

Every DIFFMASK training step needs the frozen model's pass on the unmasked input (its hidden
states feed the probe, its output is the reference of the divergence). The model does not
change during training, so the pass is the same in every epoch: :class:`OriginalPassCache`
computes it in the first epoch and serves it afterwards, saving one of the step's forward
passes (about a quarter of a step's time).

Examples are identified by ``example_index [batch]``, the example's position in its dataset,
which the project's datasets put in every batch. Each example is stored on the CPU up to its
last real token: ``[states, tokens_i, hidden]`` hidden states (``states`` = embedding output +
every layer) and its output row. Memory: ``examples x states x tokens x hidden x 4`` bytes in
float32, e.g. 2,000 news titles of about 14 tokens through MiniLM (7 states, hidden 384):
0.3 GB; through BERT-base (13 states, hidden 768): 1.1 GB.

Served batches are padded with zeros past each example's last real token. Padding positions
are never scored or masked, and attention ignores them, so the result equals the recomputed
pass up to float rounding (matrix products of another shape sum in another order).
"""

from __future__ import annotations

import torch

from attribution_analysis.methods.explained_model import ModelOutput


class OriginalPassCache:
    """Per-example original passes: :meth:`get` a whole batch or ``None``; :meth:`put` one."""

    def __init__(self) -> None:
        self._hidden: dict[int, torch.Tensor] = {}
        self._output: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._output)

    def get(self, index: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput | None:
        """The batch's original pass (``output [batch, ...]``, ``hidden_states``: a tuple of
        ``[batch, tokens, hidden]``) on ``attention_mask``'s device, or ``None`` unless every
        example of the batch is stored."""
        keys = index.tolist()
        if not all(k in self._output for k in keys):
            return None
        device = attention_mask.device
        first = self._hidden[keys[0]]
        n_states, _, hidden = first.shape
        batch, tokens = attention_mask.shape
        states = first.new_zeros(n_states, batch, tokens, hidden)
        for row, key in enumerate(keys):
            stored = self._hidden[key]
            states[:, row, : stored.shape[1]] = stored
        output = torch.stack([self._output[k] for k in keys]).to(device)
        states = states.to(device)
        return ModelOutput(output, tuple(states[k] for k in range(n_states)))

    def put(self, index: torch.Tensor, attention_mask: torch.Tensor, original: ModelOutput) -> None:
        """Store each example of a batch's original pass (which must hold hidden states)."""
        if original.hidden_states is None:
            raise ValueError("the original pass must include hidden states to be cached")
        states = torch.stack([h.detach() for h in original.hidden_states]).cpu()
        output = original.output.detach().cpu()
        lengths = _real_lengths(attention_mask.cpu())
        for row, key in enumerate(index.tolist()):
            self._hidden[key] = states[:, row, : lengths[row]].clone()
            self._output[key] = output[row].clone()


def _real_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Per row, one past the last real (attended) token ``[batch]`` as a list."""
    positions = torch.arange(1, attention_mask.shape[1] + 1)
    return (attention_mask.bool() * positions).amax(-1).tolist()
