"""Throughput of the recommender and DIFFMASK at BERT-base shape on one device (a GPU in bf16).

    python benchmarks/bench_scale_gpu.py [--device cuda] [--precision bf16] [--shape bert-base]
        [--batch_sizes 256,1024] [--tokenizer PATH]

Part of the scale benchmark (``benchmarks/bench_scale.py`` runs the CPU pipeline on a
MIND-small-sized corpus). Here every stage is timed on 32-token titles with untrained weights of
the named shape (timings depend on shapes only): one plain forward of the bare language model
(the usual "BERT forward" figure), one plain forward of the NRMS click score, DIFFMASK
attributions (one forward with hidden states + the probe), DIFFMASK's full explanation tensors
(adds the masked forward behind the divergence check), DIFFMASK extraction end to end (a loader
of titles -> ``extract_attributions_diffmask`` -> JSONL on disk), and training steps of the
recommender and of DIFFMASK. It prints titles (or steps) per second and the ratio to the plain
NRMS forward, measured in the same run, and the peak device memory.

``--precision bf16`` runs under ``accelerate``'s autocast as the pipeline does
(``mixed_precision: bf16``); ``--weights bf16`` instead casts the frozen model's weights to
bfloat16 (inference only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.extraction import extract_attributions_diffmask
from attribution_analysis.methods.explained_model import make_adapter
from attribution_analysis.models.click_scorer import ClickScorer
from attribution_analysis.models.lower_cache import build_lower_cache
from attribution_analysis.models.nrms import NRMS, NewsEncoder, UserEncoder
from attribution_analysis.utils.devices import make_accelerator

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}  # fmt: skip
VOCAB, CLS, SEP, PAD, MASK = 30522, 101, 102, 0, 103
HISTORY = 50


def build_model(shape: str, fine_tune_layers: int = 2) -> NRMS:
    """An NRMS with an untrained BERT of ``shape`` (the library's default NRMS head sizes)."""
    torch.manual_seed(0)
    plm = BertModel(BertConfig(vocab_size=VOCAB, **SHAPES[shape]), add_pooling_layer=False)
    news = NewsEncoder(plm, fine_tune_layers=fine_tune_layers)
    return NRMS(news, UserEncoder(news.dim, 20, 200, 0.2))


def titles(n: int, tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random titles of exactly ``tokens`` tokens: ``[CLS] words [SEP]``."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, VOCAB, (n, tokens), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids.to(device), torch.ones(n, tokens, dtype=torch.long, device=device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, min_seconds: float = 1.0) -> tuple[float, float | None]:
    """Median seconds of ``fn`` (after two warm-ups; at least ``repeats`` calls and
    ``min_seconds`` in all) and its peak device memory in MiB (``None`` on the CPU)."""
    fn()
    fn()
    sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated() / 2**20
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def inference_rows(args, device, accelerator) -> list[dict]:
    model = build_model(args.shape).to(device).eval()
    if args.weights == "bf16":
        model.to(torch.bfloat16)
    adapter = make_adapter(model)
    dm = DIFFMASK(
        model, special_token_ids=[CLS, SEP, PAD], mask_token_id=MASK, pad_token_id=PAD
    ).to(device)
    if args.weights == "bf16":
        dm.to(torch.bfloat16)
    dm.eval()
    rows = []
    for bs in args.batch_sizes:
        ids, mask = titles(bs, args.tokens, device)
        g = torch.Generator().manual_seed(2)
        hist = torch.randn(bs, HISTORY, model.dim, generator=g).to(device, model_dtype(model))
        ctx = {"history_emb": hist, "history_mask": torch.ones(bs, HISTORY, dtype=torch.bool,
                                                               device=device)}  # fmt: skip

        @torch.no_grad()
        def plm_forward(ids=ids, mask=mask):
            with accelerator.autocast():
                return model.news_encoder.plm(input_ids=ids, attention_mask=mask)

        @torch.no_grad()
        def nrms_forward(ids=ids, mask=mask, ctx=ctx):
            with accelerator.autocast():
                prepared = adapter.prepare_context(ctx)
                out = adapter.forward(adapter.embed(ids), mask, prepared)
                return adapter.explained_output(out.output, prepared)

        @torch.no_grad()
        def dm_scores(ids=ids, mask=mask, ctx=ctx):
            with accelerator.autocast():
                return dm.get_attributions(ids, mask, **ctx)

        @torch.no_grad()
        def dm_step(ids=ids, mask=mask, ctx=ctx):
            with accelerator.autocast():
                return dm.step(ids, mask, ctx).divergence

        fns = {
            "BERT forward (language model only)": plm_forward,
            "NRMS forward (click score)": nrms_forward,
            "DIFFMASK attributions (scores)": dm_scores,
            "DIFFMASK explanation tensors (+ masked forward)": dm_step,
        }
        base = None
        for name, fn in fns.items():
            sec, peak = timed(fn, device, args.repeats)
            base = sec if name.startswith("NRMS") else base
            rows.append(row(name, bs, bs / sec, "titles/s", peak, sec / base if base else None))
        rows.append(extraction_row(dm, ids, mask, ctx, device, accelerator, args, base))
    return rows


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def extraction_row(dm, ids, mask, ctx, device, accelerator, args, base) -> dict:
    """``extract_attributions_diffmask`` end to end: loader batches -> JSONL on disk."""
    bs = len(ids)
    n_batches = max(2, args.extraction_titles // bs)
    batch = {"input_ids": ids.cpu(), "attention_mask": mask.cpu(),
             **{k: v.cpu() for k, v in ctx.items()}}  # fmt: skip
    loader = [batch] * n_batches
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp, accelerator.autocast():
        out = Path(tmp) / "attributions.jsonl"
        extract_attributions_diffmask(dm, loader[:1], None, device, tokenizer, out, False,
                                      quiet=True)  # fmt: skip
        sync(device)
        t0 = time.perf_counter()
        extract_attributions_diffmask(dm, loader, None, device, tokenizer, out, False, quiet=True)
        sync(device)
        sec = time.perf_counter() - t0
    per_batch = sec / n_batches
    return row(
        f"DIFFMASK extraction to JSONL ({n_batches * bs} titles)",
        bs, bs / per_batch, "titles/s", None, per_batch / base,
    )  # fmt: skip


def training_rows(args, device, accelerator) -> list[dict]:
    """Recommender and DIFFMASK training steps per second (batch ``--train_batch``)."""
    rows = []
    bs, k = args.train_batch, 4
    model = build_model(args.shape).to(device)
    scorer = ClickScorer(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids, mask = titles(bs * (1 + k + HISTORY), args.tokens, device)
    n_news = len(ids)
    table = TokenTable([str(i) for i in range(n_news)], ids.cpu(), mask.cpu())
    lower = None
    with torch.no_grad(), accelerator.autocast():
        lower = build_lower_cache(model, table, mode="float16")
    rows_idx = torch.arange(n_news)
    batch = {
        "candidates": rows_idx[: bs * (1 + k)].view(bs, 1 + k),
        "history": rows_idx[bs * (1 + k) :].view(bs, HISTORY),
        "history_mask": torch.ones(bs, HISTORY, dtype=torch.bool),
        "target": torch.zeros(bs, dtype=torch.long),
    }
    model.train()

    def rec_step():
        with accelerator.autocast():
            logits = scorer(batch, table, lower)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["target"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec, peak = timed(rec_step, device, args.repeats)
    rows.append(row(f"recommender training step (1+{k} candidates, {HISTORY} history)",
                    bs, 1 / sec, "steps/s", peak, None))  # fmt: skip
    model.eval()
    dm = DIFFMASK(model, special_token_ids=[CLS, SEP, PAD], mask_token_id=MASK, pad_token_id=PAD)
    dm.to(device).train()
    dm_opt = torch.optim.Adam(dm.probe.parameters(), lr=1e-3)
    ids, mask = titles(bs, args.tokens, device)
    hist = torch.randn(bs, HISTORY, model.dim, device=device)
    ctx = {"history_emb": hist, "history_mask": torch.ones(bs, HISTORY, dtype=torch.bool,
                                                           device=device)}  # fmt: skip

    def dm_train_step():
        with accelerator.autocast():
            step = dm.step(ids, mask, ctx)
            loss = dm.lagrangian(step)
        dm_opt.zero_grad(set_to_none=True)
        loss.backward()
        dm_opt.step()

    sec, peak = timed(dm_train_step, device, args.repeats)
    rows.append(row("DIFFMASK training step (original pass not cached)", bs, 1 / sec,
                    "steps/s", peak, None))  # fmt: skip
    return rows


def row(stage, batch, rate, unit, peak, ratio) -> dict:
    return {"stage": stage, "batch": batch, "rate": rate, "unit": unit, "peak_mib": peak,
            "ratio": ratio}  # fmt: skip


def print_table(rows: list[dict], args, device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; torch {torch.__version__}; shape {args.shape}; "
        f"{args.tokens}-token titles; precision {args.precision}; weights {args.weights}"
    )
    print("| stage | batch | rate | time / NRMS forward | peak device MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else ""
        digits = 0 if r["rate"] >= 100 else 2
        rate = f"{r['rate']:,.{digits}f} {r['unit']}"
        print(f"| {r['stage']} | {r['batch']} | {rate} | {ratio} | {peak} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    parser.add_argument("--weights", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--shape", default="bert-base", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch_sizes", default="256,1024")
    parser.add_argument("--train_batch", type=int, default=32)
    parser.add_argument("--extraction_titles", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (words in JSONL)")
    parser.add_argument("--skip_training", action="store_true")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    accelerator = make_accelerator(args.device, args.precision)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = inference_rows(args, device, accelerator)
    if not args.skip_training:
        rows += training_rows(args, device, accelerator)
    print_table(rows, args, device)
    return rows


if __name__ == "__main__":
    main()
