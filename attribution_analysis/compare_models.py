"""Compare two recommenders' explanations of the same candidates: which title words drive one
model (e.g. trained on poisoned data, or retrained) and not the other.

    python -m attribution_analysis.compare_models --config configs/compare/poison.yaml

Each recommender is trained first when its folder is missing (and its attribution config
allows it), gets its own DIFFMASK, and explains the same held-out candidates. Writes
``words_diff.csv``, ``groups_diff.csv``, ``candidates.csv``, ``summary.json`` and
``report.html`` into ``<output_dir>/run_<YYYYmmdd_HHMMSS>/`` (``--run_dir`` resumes a run).
"""

from __future__ import annotations

import argparse
import sys

from attribution_analysis.app.cli import positive_int, run_cli
from attribution_analysis.app.model_comparison import run_model_comparison
from attribution_analysis.config import ModelComparisonConfig, load_config
from attribution_analysis.methods.registry import parse_method_list


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare_models", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--config", default="configs/compare/poison.yaml", help="comparison YAML")
    p.add_argument(
        "--n_samples", type=positive_int, help="override n_samples (candidates explained)"
    )
    p.add_argument(
        "--methods",
        help="override methods, comma-separated (diffmask always; e.g. diffmask,leave_one_out); "
        "with --run_dir, adds methods to a finished run without retraining its DIFFMASKs",
    )
    p.add_argument("--output_dir", help="override output_dir")
    p.add_argument("--run_dir", help="resume this run folder")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument(
        "--reuse_explanations", action="store_true",
        help="recompute the statistics from the explanations already in --run_dir (other fdr, "
        "min_effect, rank_by, ...) instead of training and explaining again",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        config = load_config(ModelComparisonConfig, args.config)
        for key in ("n_samples", "output_dir", "seed"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        if args.methods is not None:
            config.methods = parse_method_list(args.methods)
        result = run_model_comparison(config, args.run_dir, args.quiet, args.reuse_explanations)
        s = result.summary
        print(f"[result] {s['n_candidates']} candidates; {s['n_significant_rising']} words rose "
              f"and {s['n_significant_falling']} fell significantly under model B "
              f"(FDR {s['fdr']})")  # fmt: skip
        print(f"[result] top rising: {', '.join(s['top_rising'][:10]) or 'none'}")
        known = s.get("known_words")
        if known:
            print(f"[result] known words {known['words']}: ranks {known['rank_by_rise']}, "
                  f"AUPRC {known['auprc']:.3f}")  # fmt: skip
        print(f"[result] run folder: {result.run_dir}")
        print(f"[result] report: {result.run_dir / 'report.html'}")

    return run_cli(go, "compare_models", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
