r"""Convert SmallBigNet weights between PyTorch and JAX.

Official SmallBigNet checkpoint (.pth) -> converted JAX checkpoint directory (Orbax + model_config.json +
conversion_report.json); the variant, class count and width are inferred from the keys unless given:

    smallbig-jax convert --input model_best_smallbig50_no_extra.pth --output converted/sb50_k400

torchvision ImageNet ResNet-50/101 (.pth) -> SmallBig initial weights (inflated as the official code does):

    smallbig-jax convert --imagenet --input resnet50-19c8e357.pth --output init/sb50_in1k \
        --variant smallbig50 --num_classes 400

Converted JAX checkpoint directory -> PyTorch state dict with the official module names:

    smallbig-jax convert --export --input converted/sb50_k400 \
        --output sb50_k400_export.pth [--official_format]

Loading a .pth never executes code from it (torch.load weights_only=True). On any problem the command prints every
reason, writes nothing and exits with status 2.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from smallbig_jax import cli
from smallbig_jax.convert import (
    CheckpointFormatError,
    ConversionError,
    convert_pth,
    inflate_imagenet_pth,
    load_converted_model,
    save_converted,
    save_pth,
)
from smallbig_jax.models import VARIANTS, count_params

FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, ".pth file, or a converted directory with --export", flag_values=FLAGS)
flags.DEFINE_string("output", None, "output directory (import) or .pth file (--export)", flag_values=FLAGS)
flags.DEFINE_bool("imagenet", False, "input is a torchvision ImageNet ResNet-50/101", flag_values=FLAGS)
flags.DEFINE_bool("export", False, "JAX -> PyTorch: input is a converted directory", flag_values=FLAGS)
flags.DEFINE_enum("variant", None, sorted(VARIANTS), "default: inferred from the keys", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "default: inferred from fc.weight (400 with --imagenet)", flag_values=FLAGS)
flags.DEFINE_integer("base_width", None, "default: inferred from conv1.weight", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "--imagenet: init seed of the tensors not taken from ImageNet", flag_values=FLAGS)
flags.DEFINE_bool(
    "allow_partial",
    False,
    "--imagenet: load only the keys both sides have (the official part_state_dict), e.g. R50 -> smallbig23",
    flag_values=FLAGS,
)
flags.DEFINE_bool("official_format", False, "--export: {'state_dict': {'module.' + key}}", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "replace an existing output", flag_values=FLAGS)
flags.mark_flags_as_required(["input", "output"], flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int:
    args = FLAGS
    if args.imagenet and args.export:
        raise app.UsageError("--imagenet and --export exclude each other")
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
        print(f"error: {cli.error_text(e)}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2
