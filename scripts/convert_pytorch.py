#!/usr/bin/env python
r"""Convert SmallBigNet weights between PyTorch and JAX.

Official SmallBigNet checkpoint (.pth) -> converted JAX checkpoint directory (Orbax + model_config.json +
conversion_report.json); the variant, class count and width are inferred from the keys unless given:

    python scripts/convert_pytorch.py --input model_best_smallbig50_no_extra.pth --output converted/sb50_k400

torchvision ImageNet ResNet-50/101 (.pth) -> SmallBig initial weights (inflated as the official code does):

    python scripts/convert_pytorch.py --imagenet --input resnet50-19c8e357.pth --output init/sb50_in1k \
        --variant smallbig50 --num-classes 400

Converted JAX checkpoint directory -> PyTorch state dict with the official module names:

    python scripts/convert_pytorch.py --export --input converted/sb50_k400 \
        --output sb50_k400_export.pth [--official-format]

Loading a .pth never executes code from it (torch.load weights_only=True). On any problem the script prints every
reason, writes nothing and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from smallbig_jax import cli  # noqa: E402
from smallbig_jax.convert import (  # noqa: E402
    CheckpointFormatError,
    ConversionError,
    convert_pth,
    inflate_imagenet_pth,
    load_converted_model,
    save_converted,
    save_pth,
)
from smallbig_jax.models import VARIANTS, count_params  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help=".pth file, or a converted directory with --export")
    p.add_argument("--output", required=True, help="output directory (import) or .pth file (--export)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--imagenet", action="store_true", help="input is a torchvision ImageNet ResNet-50/101")
    mode.add_argument("--export", action="store_true", help="JAX -> PyTorch: input is a converted directory")
    p.add_argument("--variant", choices=sorted(VARIANTS), help="default: inferred from the keys")
    p.add_argument("--num-classes", type=int, help="default: inferred from fc.weight (400 with --imagenet)")
    p.add_argument("--base-width", type=int, help="default: inferred from conv1.weight")
    p.add_argument("--seed", type=int, default=0, help="--imagenet: init seed of the tensors not taken from ImageNet")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="--imagenet: load only the keys both sides have (the official part_state_dict), e.g. R50 -> smallbig23",
    )
    p.add_argument("--official-format", action="store_true", help="--export: {'state_dict': {'module.' + key}}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.export:
            if os.path.exists(args.output) and not args.overwrite:
                raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
            model = load_converted_model(args.input)
            report = save_pth(model, args.output, official_format=args.official_format)
            print(
                f"exported {report['variant']} ({report['official_name']}), {report['num_classes']} classes, "
                f"base width {report['base_width']}: {report['keys']} keys -> {args.output} ({report['format']})"
            )
            return 0
        if args.imagenet:
            model, report = inflate_imagenet_pth(
                args.input,
                args.variant,
                args.num_classes if args.num_classes is not None else 400,
                base_width=args.base_width,
                seed=args.seed,
                allow_partial=args.allow_partial,
            )
            print(
                f"ImageNet source: {report['source_arch']}; target {report['variant']} ({report['official_name']}), "
                f"{report['num_classes']} classes, base width {report['base_width']}"
            )
            print(
                f"  {report['tensors_from_imagenet']} tensors from ImageNet "
                f"({', '.join(report['temporal_inflation'])}), "
                f"{report['tensors_at_init']} at init (classifier, big-view BNs, extra gate"
                + (", missing in file" if report["missing_left_at_init"] else "")
                + ")"
            )
        else:
            model, report = convert_pth(args.input, args.variant, args.num_classes, args.base_width)
            for note in report["notes"]:
                print(f"  {note}")
            c = report["container"]
            print(
                f"read {c['wrapper']}"
                + (f", stripped prefix {c['prefix_stripped']!r}" if c["prefix_stripped"] else "")
                + f", dtypes {', '.join(c['dtypes'])}; {report['tensors_converted']} tensors converted, "
                f"{report['ignored_num_batches_tracked']} num_batches_tracked ignored"
            )
        report["params"] = count_params(model)
        out = save_converted(args.output, model, report, overwrite=args.overwrite)
        print(
            f"wrote {out}: {report['variant']} ({report['official_name']}), {report['num_classes']} classes, "
            f"{report['params']:,} params"
        )
        return 0
    except (ConversionError, CheckpointFormatError, FileExistsError) as e:
        if cli.debug_requested():
            raise
        print(f"error: {e}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
