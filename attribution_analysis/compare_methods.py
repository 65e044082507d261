"""Compare attribution methods on the same held-out examples.

    python -m attribution_analysis.compare_methods --config configs/attribution/nrms_bert_finetune.yaml \\
        --methods diffmask,diffmask_effect,diffmask_loo,ig,attention,random --n_samples 100

DIFFMASK (for ``diffmask``, ``diffmask_effect`` and ``diffmask_loo``) comes from ``--checkpoint`` or is trained on the
fly. Writes ``comparison.md``, ``comparison.csv``, ``comparison.json`` and
``deletion_curves.png`` / ``insertion_curves.png`` into
``<output_dir>/compare_<YYYYmmdd_HHMMSS>/`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys

from attribution_analysis.app.cli import positive_int, run_cli
from attribution_analysis.app.comparison import run_comparison
from attribution_analysis.app.workspace import open_workspace
from attribution_analysis.config import AttributionConfig, load_config, resolve_path, to_dict
from attribution_analysis.evaluation.removal import OPERATIONS
from attribution_analysis.methods.diffmask.checkpoint import read_checkpoint
from attribution_analysis.methods.diffmask.train_diffmask import load_diffmask_checkpoint
from attribution_analysis.methods.registry import TRAINED_DIFFMASK, parse_method_list
from attribution_analysis.utils.devices import check_device, seed_everything
from attribution_analysis.utils.io import atomic_write_json, timestamped_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare_methods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="attribution YAML config")
    p.add_argument(
        "--methods",
        default="diffmask,diffmask_effect,diffmask_loo,ig,attention,random",
        help="comma-separated",
    )
    p.add_argument("--n_samples", type=positive_int, help="held-out examples")
    p.add_argument("--checkpoint", help="trained DIFFMASK checkpoint (else trained on the fly)")
    p.add_argument("--removal", default="mask", choices=sorted(OPERATIONS), help="removal op")
    p.add_argument("--ig_steps", type=positive_int, help="Integrated Gradients steps")
    p.add_argument(
        "--effect_titles", type=positive_int, help="train titles that fit diffmask_effect's head"
    )
    p.add_argument("--output_dir", help="parent folder of the compare_<timestamp> folder")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        from attribution_analysis.app.analysis import train_for_workspace

        config = load_config(AttributionConfig, args.config)
        for key in ("n_samples", "ig_steps", "effect_titles", "output_dir", "seed"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        names = parse_method_list(args.methods, config.diffmask.gates.mask_layer)
        check_device(config.device)
        needs_diffmask = any(n in TRAINED_DIFFMASK for n in names)
        if args.checkpoint and needs_diffmask:
            read_checkpoint(args.checkpoint)  # an unreadable file fails before any folder exists
        seed_everything(config.seed)
        out_dir = timestamped_dir(resolve_path(config.output_dir), "compare")
        atomic_write_json(out_dir / "config.json", to_dict(config))
        ws = open_workspace(config, args.quiet)
        diffmask = None
        if needs_diffmask:
            if args.checkpoint:
                diffmask = load_diffmask_checkpoint(args.checkpoint, ws.model)
            else:
                diffmask = train_for_workspace(ws, out_dir / "diffmask", args.quiet)
        run_comparison(ws, names, diffmask, out_dir, args.removal, args.quiet)
        print(f"[result] comparison written to {out_dir}")

    return run_cli(go, "compare_methods", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
