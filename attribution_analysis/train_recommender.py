"""Train and evaluate the NRMS news recommender, and write MIND-format predictions.

    python -m attribution_analysis.train_recommender --config configs/recommender/nrms_minilm.yaml

Writes ``<output_dir>/<run_name>/``: ``config.json``, ``checkpoints/epoch_<N>.pt`` (resume by
rerunning), ``best/`` (``model.safetensors`` + ``config.json``), ``history.json``,
``metrics.json`` and ``prediction.txt`` (``impid [rank,...]`` for the dev split).

Several processes (GPUs, or CPU processes with gloo) share training and dev scoring::

    torchrun --nproc_per_node 2 -m attribution_analysis.train_recommender --config ...
    accelerate launch --multi_gpu --num_processes 4 -m attribution_analysis.train_recommender ...
"""

from __future__ import annotations

import argparse
import sys

from attribution_analysis.app.cli import positive_int, run_cli
from attribution_analysis.config import RecommenderConfig, load_config
from attribution_analysis.data.loading import ensure_synthetic, load_mind_data
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.training import train_recommender, write_dev_results
from attribution_analysis.utils.devices import make_accelerator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_recommender",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="configs/recommender/nrms_minilm.yaml",
        help="YAML config (RecommenderConfig)",
    )
    parser.add_argument("--epochs", type=positive_int, help="override train.epochs")
    parser.add_argument(
        "--max_steps_per_epoch", type=positive_int, help="override train.max_steps_per_epoch"
    )
    parser.add_argument("--run_name", help="override train.run_name (the run folder's name)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def run(config: RecommenderConfig, quiet: bool = False) -> dict:
    """Train, reload the best model, evaluate dev and write predictions; returns the metrics.

    Under ``torchrun`` / ``accelerate launch`` training and dev scoring are shared across the
    processes; the main process alone writes files and prints."""
    accelerator = make_accelerator(config.train.device, config.train.mixed_precision)
    main = accelerator.is_main_process
    tokenizer = load_tokenizer(config.model)
    if main:
        ensure_synthetic(config.data)
    accelerator.wait_for_everyone()
    data = load_mind_data(config.data, tokenizer)
    result = train_recommender(config, data, quiet=quiet)
    summary = write_dev_results(config, data, result, accelerator)
    if not main:
        return summary
    metrics = summary["dev"]
    print(f"[data] {data.stats.summary()}")
    print(
        "[result] dev "
        + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        + f"  ({result.seconds:.0f}s training)"
    )
    print(f"[result] model: {result.best_dir}   predictions: {result.run_dir / 'prediction.txt'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        config = load_config(RecommenderConfig, args.config)
        for key in ("epochs", "max_steps_per_epoch", "run_name", "device", "seed"):
            value = getattr(args, key)
            if value is not None:
                setattr(config.train, key, value)
        run(config, quiet=args.quiet)

    return run_cli(go, "train_recommender", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
