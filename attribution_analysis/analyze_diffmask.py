"""Train DIFFMASK on a news recommender (or load a trained one), explain held-out impressions,
evaluate the explanations and write a run folder with a standalone HTML report.

    python attribution_analysis/analyze_diffmask.py --config configs/attribution/nrms_bert_finetune.yaml \\
        --n_samples 100 --top_k 15
    python attribution_analysis/analyze_diffmask.py --config configs/attribution/nrms_bert_finetune.yaml \\
        --n_samples 100 --checkpoint output/diffmask/run_<timestamp>/checkpoints/best.pt \\
        --skip_training

``--n_epochs`` is a cap: training stops when lambda and the validation L0 have levelled off.

Run folder ``<output_dir>/run_<YYYYmmdd_HHMMSS>/``: ``config.yaml`` (resolved), ``checkpoints/``,
``training_history.csv`` + PNG plots, ``attributions.jsonl``, ``top_words_per_sample.csv``,
``top_words.csv``, ``summary.json``, ``report.html``. An interrupted training resumes with
``--run_dir <that folder>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable, not its folders
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _root)

import argparse  # noqa: E402

from attribution_analysis.app.cli import positive_float, positive_int, run_cli  # noqa: E402
from attribution_analysis.config import (  # noqa: E402
    AttributionConfig,
    ConfigError,
    load_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyze_diffmask",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="attribution YAML config (AttributionConfig)")
    p.add_argument("--n_samples", type=positive_int, help="held-out examples to explain")
    p.add_argument("--n_epochs", type=positive_int, help="DIFFMASK training epochs")
    p.add_argument(
        "--probe_type", choices=["simple", "layerwise"], help="one probe, or the layer vote"
    )
    p.add_argument("--constraint_margin", type=positive_float, help="divergence margin m")
    p.add_argument("--top_k", type=positive_int, help="words listed per sample and overall")
    p.add_argument("--checkpoint", help="a DIFFMASK checkpoint (.pt) to start from or to use")
    p.add_argument(
        "--skip_training", action="store_true", help="use --checkpoint as it is (no training)"
    )
    p.add_argument("--output_dir", help="parent folder of run_<timestamp> folders")
    p.add_argument("--run_dir", help="use (and resume) this run folder instead of a new one")
    p.add_argument("--seed", type=int, help="seed for sampling, training and example choice")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--batch_size", type=positive_int, help="examples per batch")
    p.add_argument("--temperature", type=positive_float, help="Hard Concrete temperature")
    p.add_argument("--stretch", type=positive_float, help="Hard Concrete stretch s (-s, 1+s)")
    p.add_argument("--lr_probe", type=positive_float, help="probe learning rate")
    p.add_argument("--lr_baseline", type=positive_float, help="baseline learning rate")
    p.add_argument("--lr_lambda", type=positive_float, help="Lagrange multiplier learning rate")
    p.add_argument(
        "--compare", help="also run these methods for a comparison table (e.g. ig,random)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


TOP_LEVEL = ("n_samples", "top_k", "output_dir", "seed", "device", "batch_size")
DIFFMASK_KEYS = (
    "n_epochs",
    "probe_type",
    "constraint_margin",
    "temperature",
    "stretch",
    "lr_probe",
    "lr_baseline",
    "lr_lambda",
)


def apply_overrides(config: AttributionConfig, args: argparse.Namespace) -> AttributionConfig:
    """Command-line flags override the config file."""
    for key in TOP_LEVEL:
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    for key in DIFFMASK_KEYS:
        if getattr(args, key) is not None:
            config.diffmask.set(key, getattr(args, key))
    if args.compare is not None:
        config.compare_methods = [m for m in args.compare.split(",") if m]
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        from attribution_analysis.app.analysis import run_analysis

        if args.skip_training and not args.checkpoint:
            raise ConfigError("--skip_training needs --checkpoint")
        if args.checkpoint and not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        config = apply_overrides(load_config(AttributionConfig, args.config), args)
        run_analysis(
            config,
            checkpoint=args.checkpoint,
            skip_training=args.skip_training,
            run_dir=args.run_dir,
            quiet=args.quiet,
        )

    return run_cli(go, "analyze_diffmask", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
