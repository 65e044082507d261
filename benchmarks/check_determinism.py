"""Are two seeded backward passes of the recommender bit-identical on this machine?

    python benchmarks/check_determinism.py

Builds NRMS with the embedded MiniLM encoder (config ``configs/recommender/nrms_minilm.yaml``,
untrained weights), takes one training batch of 32 clicks and runs the same forward and
backward pass twice, with torch's default kernels and then with deterministic kernels
(``torch.use_deterministic_algorithms``, which ``seed_everything`` turns on). It prints the
largest difference between the two gradients in each case. Measured on the 2-core CPU: about
1e-9 with the default kernels (enough to make two training runs of the same command end about
1e-5 apart in the weights), exactly 0 with deterministic kernels. Takes about half a minute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attribution_analysis.config import RecommenderConfig, load_config
from attribution_analysis.data.datasets import ClickSamples, collate_clicks
from attribution_analysis.data.loading import ensure_synthetic, load_mind_data
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import build_nrms
from attribution_analysis.models.training import batch_logits, build_lower_cache


def max_gradient_difference(model, batch, data, cache) -> float:
    """Largest absolute difference between the gradients of two identical passes."""

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)
        logits = batch_logits(model, batch, data.table, cache)
        F.cross_entropy(logits.float(), batch["target"]).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    first, second = grads(), grads()
    return max((a - b).abs().max().item() for a, b in zip(first, second))


def main() -> None:
    config = load_config(RecommenderConfig, "configs/recommender/nrms_minilm.yaml")
    tokenizer = load_tokenizer(config.model)
    ensure_synthetic(config.data)
    data = load_mind_data(config.data, tokenizer)
    torch.manual_seed(0)
    model = build_nrms(config.model, len(tokenizer)).train()
    cache = build_lower_cache(model, data.table)
    samples = ClickSamples(data.train, data.table, config.data.npratio, config.data.max_history)
    batch = collate_clicks([samples[i] for i in range(32)])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        diff = max_gradient_difference(model, batch, data, cache)
        print(f"deterministic kernels {deterministic!s:5}: max gradient difference {diff:.3g}")


if __name__ == "__main__":
    main()
