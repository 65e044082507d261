"""The pipeline at MIND-small size on this machine: time, rate and peak resident memory per stage.

    python benchmarks/bench_scale.py [--out output/bench_scale] [--scale 1.0] [--lower_cache auto]

Stages, in one process, on a synthetic corpus of MIND-small's size (65,000 news, 50,000 users,
230,000 impressions at ``--scale 1``) with the embedded MiniLM NRMS (untrained weights: the
costs depend on shapes only): corpus generation; reading both splits + the token table; the
lower-layer cache (``train.lower_cache``); ``--train_steps`` recommender training steps (batch
32); encoding every news title; scoring ``--dev_impressions`` dev impressions; ``--dm_steps``
DIFFMASK training steps (batch 32); extraction of ``--extract`` candidates streamed to JSONL,
twice the number the second time, to show that its memory does not grow with the candidates.

Peak resident memory (VmRSS, sampled every 20 ms, plus the kernel's high-water mark VmHWM for
the whole run) is printed per stage; the target for the whole pipeline is 4 GiB. The GPU part
(BERT-base shape, bf16) is ``benchmarks/bench_scale_gpu.py``.
"""

from __future__ import annotations

import argparse
import platform
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from attribution_analysis.config import DataConfig, ModelConfig, RecommenderConfig, TrainConfig
from attribution_analysis.data.datasets import ClickSamples, collate_clicks
from attribution_analysis.data.explanation_set import ExplanationSet, select_examples
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.data.synthetic import SyntheticConfig, generate_corpus
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.extraction import extract_attributions_diffmask
from attribution_analysis.methods.diffmask.train_diffmask import train_diffmask
from attribution_analysis.models.click_scorer import ClickScorer
from attribution_analysis.models.inference import encode_news_table, score_impressions
from attribution_analysis.models.lower_cache import build_lower_cache, cache_bytes, resolve_mode
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import build_nrms

GIB = 2**30
MIND_SMALL = {"n_news": 65_000, "n_users": 50_000, "n_impressions": 230_000}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRSS:
    """Samples this process's resident memory (VmRSS) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = _status_kib("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("VmRSS"))


ROWS: list[dict] = []


def stage(name: str, fn, count: float | None = None, unit: str = ""):
    """Run ``fn()``; record seconds, rate (``count`` per second) and peak resident memory."""
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    rate = f"{count / seconds:,.1f} {unit}/s" if count else ""
    ROWS.append({"stage": name, "seconds": seconds, "rate": rate, "peak_gib": rss.peak / 2**20})
    print(f"[bench] {name}: {seconds:.1f} s {rate} peak {rss.peak / 2**20:.2f} GiB", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="output/bench_scale")
    parser.add_argument("--scale", type=float, default=1.0, help="share of MIND-small's size")
    parser.add_argument("--lower_cache", default="auto")
    parser.add_argument("--train_steps", type=int, default=10)
    parser.add_argument("--dev_impressions", type=int, default=2000)
    parser.add_argument("--dm_steps", type=int, default=5)
    parser.add_argument("--extract", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    sizes = {k: max(1, int(v * args.scale)) for k, v in MIND_SMALL.items()}
    corpus = out / "data"
    if not (corpus / "dev" / "behaviors.tsv").is_file():
        stage("generate corpus", lambda: generate_corpus(corpus, SyntheticConfig(**sizes)),
              sizes["n_impressions"], "impressions")  # fmt: skip
    data_cfg = DataConfig(train_dir=str(corpus / "train"), dev_dir=str(corpus / "dev"),
                          rationales=None, cache_dir=str(out / "cache"))  # fmt: skip
    config = RecommenderConfig(data=data_cfg, model=ModelConfig(),
                               train=TrainConfig(lower_cache=args.lower_cache))  # fmt: skip
    tok = load_tokenizer(config.model)
    data = stage("read data + token table", lambda: load_mind_data(data_cfg, tok),
                 sizes["n_news"], "news")  # fmt: skip
    model = build_nrms(config.model, len(tok))
    mode = resolve_mode(args.lower_cache, model, data.table)
    print(f"[bench] lower cache: {mode} ({cache_bytes(model, data.table) / GIB:.2f} GiB in fp32)")
    lower = stage(f"lower-layer cache ({mode})",
                  lambda: build_lower_cache(model, data.table, 256, mode, out / "lower.npy"),
                  len(data.table), "news")  # fmt: skip
    stage("recommender training steps",
          lambda lower=lower: _train(model, data, lower, args.train_steps),
          args.train_steps, "steps")  # fmt: skip
    del lower
    vectors = stage("encode all news", lambda: encode_news_table(model, data.table),
                    len(data.table), "news")  # fmt: skip
    dev = data.dev[: args.dev_impressions]
    stage("score dev impressions",
          lambda: score_impressions(model, dev, data.table, 50, 256, news_vectors=vectors),
          len(dev), "impressions")  # fmt: skip
    dm = DIFFMASK.from_config(model.eval(), None, tok)
    ds = ExplanationSet(select_examples(data.train, 32 * args.dm_steps, seed=0), data.table,
                        vectors)  # fmt: skip
    loader = DataLoader(ds, batch_size=32, shuffle=True, collate_fn=ds.collate)
    stage("DIFFMASK training steps",
          lambda: train_diffmask(dm, loader, n_epochs=1, convergence=None, save_checkpoints=False,
                                 quiet=True),
          args.dm_steps, "steps")  # fmt: skip
    for n in (args.extract, 2 * args.extract):
        ex = ExplanationSet(select_examples(data.dev, n, seed=1), data.table, vectors)
        plain = DataLoader(ex, batch_size=32, collate_fn=ex.collate)
        stage(f"extraction, {n} candidates to JSONL",
              lambda plain=plain, n=n: extract_attributions_diffmask(
                  dm, plain, n, tokenizer=tok, output_path=out / "attributions.jsonl",
                  return_results=False, quiet=True),
              n, "candidates")  # fmt: skip
    print_table(args, sizes)


def _train(model, data, lower, steps: int) -> None:
    samples = ClickSamples(data.train, data.table, 4, 50, 0)
    loader = DataLoader(samples, batch_size=32, shuffle=True, collate_fn=collate_clicks)
    scorer = ClickScorer(model).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        loss = torch.nn.functional.cross_entropy(scorer(batch, data.table, lower), batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def print_table(args, sizes: dict) -> None:
    hwm = _status_kib("VmHWM") / 2**20
    print(f"\nCPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; corpus {sizes}; lower_cache {args.lower_cache}; "
          f"MiniLM NRMS")  # fmt: skip
    print("| stage | seconds | rate | peak resident GiB |")
    print("|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['stage']} | {r['seconds']:.1f} | {r['rate']} | {r['peak_gib']:.2f} |")
    verdict = "within" if hwm <= 4 else "OVER"
    print(f"whole run: peak resident {hwm:.2f} GiB (VmHWM), {verdict} the 4 GiB target")


if __name__ == "__main__":
    main()
