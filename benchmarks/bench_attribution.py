"""Time attribution methods against one plain forward pass of the same model on the same batch.

    python benchmarks/bench_attribution.py [--models tiny,minilm] [--batch_sizes 1,32] [--repeats 5]

For each model (a tiny random BERT NRMS and the NRMS with the embedded all-MiniLM-L6-v2 encoder)
and batch size, it times one plain forward pass (news encoder + user vector + score), DIFFMASK
attribution (``get_attributions``: one forward with hidden states + the probe), Integrated
Gradients (n_steps=50), Saliency, Input x Gradient, attention, leave-one-out, DIFFMASK's set in
leave-one-out order (``diffmask_loo``), DIFFMASK's set in its effect head's order
(``diffmask_effect``; the head fitted on 64 titles, a fit costs the same per token whatever
it learns) and random. It prints
median seconds, the ratio to the plain forward pass, DIFFMASK's speed-up over IG per example and,
on a GPU, peak memory. Timings depend on the weights only through their shapes, so untrained
weights are used (a trained probe costs the same as an untrained one).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from attribution_analysis.config import ModelConfig
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.explained_model import make_adapter
from attribution_analysis.methods.registry import build_method
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import build_nrms

MODELS = {
    "tiny": ModelConfig(encoder="tiny-random-bert", num_heads=2, head_dim=8, query_dim=16),
    "minilm": ModelConfig(),
}
TITLES = [
    "quarterback throws late touchdown as rivals fall in overtime thriller",
    "markets rally while investors weigh new inflation numbers",
    "storm warning issued for coastal towns ahead of the weekend",
    "new study links sleep to better memory in older adults",
]


def make_batch(tokenizer, model, batch_size: int, history: int, device):
    """Candidate token ids ``[batch, tokens]`` and history vectors ``[batch, history, dim]``."""
    titles = [TITLES[i % len(TITLES)] for i in range(batch_size)]
    enc = tokenizer(titles, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    hist = torch.randn(batch_size, history, model.dim, generator=g)
    ctx = {
        "history_emb": hist.to(device),
        "history_mask": torch.ones(batch_size, history, dtype=torch.bool, device=device),
    }
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), ctx


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_round_robin(fns: dict, repeats: int, device) -> dict[str, tuple[float, float | None]]:
    """Median seconds per function, calls interleaved round-robin (so machine noise hits all
    alike), after one warm-up each; CUDA peak memory (MiB) per function from a separate call."""
    peaks: dict[str, float | None] = {}
    for name, fn in fns.items():
        fn()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fn()
            _sync(device)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        else:
            peaks[name] = None
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), peaks[name]) for name, t in times.items()}


def bench_model(name: str, batch_sizes: list[int], repeats: int, device) -> list[dict]:
    config = MODELS[name]
    tokenizer = load_tokenizer(config)
    torch.manual_seed(0)
    model = build_nrms(config, len(tokenizer)).to(device).eval()
    adapter = make_adapter(model)
    special = tokenizer.all_special_ids
    ids_kw = {"pad_token_id": tokenizer.pad_token_id, "mask_token_id": tokenizer.mask_token_id}
    diffmask = (
        DIFFMASK(
            model,
            probe_type="simple",
            special_token_ids=special,
            mask_token_id=tokenizer.mask_token_id,
        )
        .to(device)
        .eval()
    )
    layerwise = (
        DIFFMASK(
            model,
            probe_type="layerwise",
            special_token_ids=special,
            mask_token_id=tokenizer.mask_token_id,
        )
        .to(device)
        .eval()
    )
    methods = {
        "ig (n_steps=50)": build_method(
            "ig", model, special_token_ids=special, n_steps=50, **ids_kw
        ),
        "saliency": build_method("saliency", model, special_token_ids=special),
        "input_x_gradient": build_method("input_x_gradient", model, special_token_ids=special),
        "attention": build_method("attention", model, special_token_ids=special),
        "leave_one_out": build_method("leave_one_out", model, special_token_ids=special, **ids_kw),
        "diffmask_loo (layerwise probe)": build_method(
            "diffmask_loo", model, diffmask=layerwise, special_token_ids=special, **ids_kw
        ),
        "diffmask_effect (layerwise probe)": build_method(
            "diffmask_effect",
            model,
            diffmask=layerwise,
            special_token_ids=special,
            titles=[make_batch(tokenizer, model, 64, 20, device)[:2]],
        ),  # fmt: skip
        "random": build_method("random", model, special_token_ids=special),
    }
    rows = []
    for bs in batch_sizes:
        ids, mask, ctx = make_batch(tokenizer, model, bs, 20, device)
        dms = {"diffmask (simple probe)": diffmask, "diffmask (layerwise probe)": layerwise}
        results = bench_batch(adapter, dms, methods, ids, mask, ctx, repeats, device)
        base, ig = results["plain forward"][0], results["ig (n_steps=50)"][0]
        for k, (sec, peak) in results.items():
            rows.append(
                {
                    "model": name,
                    "batch": bs,
                    "method": k,
                    "seconds": sec,
                    "ratio_to_forward": sec / base,
                    "ig_speedup": ig / sec if k.startswith("diffmask") else None,
                    "peak_mib": peak,
                }
            )
    return rows


def bench_batch(adapter, diffmasks, methods, ids, mask, ctx, repeats, device) -> dict:
    """``{name: (median seconds, peak MiB)}`` for the plain forward and every method."""

    @torch.no_grad()
    def forward():
        out = adapter.forward(adapter.embed(ids), mask, ctx)
        return adapter.explained_output(out.output, ctx)

    prepared = adapter.prepare_context(ctx)
    fns = {"plain forward": forward}
    for k, dm in diffmasks.items():
        fns[k] = lambda dm=dm: dm.get_attributions(ids, mask, **ctx)
    for k, m in methods.items():
        fns[k] = lambda m=m: m.attribute(ids, mask, prepared)
    return timed_round_robin(fns, repeats, device)


def print_table(rows: list[dict], device) -> None:
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print("| model | batch | method | median s | x plain forward | speed-up over IG | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['ig_speedup']:.0f}x" if r["ig_speedup"] else ""
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a (CPU)"
        print(
            f"| {r['model']} | {r['batch']} | {r['method']} | {r['seconds']:.4f} | "
            f"{r['ratio_to_forward']:.2f} | {speed} | {peak} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,minilm")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.models.split(","):
        rows += bench_model(
            name, [int(b) for b in args.batch_sizes.split(",")], args.repeats, device
        )
    print_table(rows, device)


if __name__ == "__main__":
    main()
