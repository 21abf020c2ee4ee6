"""Convert CLIP checkpoints: into a Keras ``.keras`` file, or back out to a transformers /
open_clip folder.

    python -m keras_clip.convert CHECKPOINT OUT.keras [--preset ViT-B-32] [--activation gelu]
    python -m keras_clip.convert MODEL.keras OUT_DIR --to hf|open_clip [--overwrite]

CHECKPOINT is anything `keras_clip.load_pretrained` reads: an open_clip hub folder, a
transformers folder, a keras-hub CLIP preset folder, or a weights file (.pt OpenAI TorchScript,
.bin/.pt/.pth torch state dicts, .safetensors, .npz). A folder's config gives the architecture;
for a bare weights file it is inferred from the tensor shapes, with OpenAI's 64-wide attention
heads (pass --preset or --text-heads / --vision-heads otherwise) and QuickGELU unless
--activation says. With --to, the input may also be a .keras model, and the output is a folder
that transformers' ``CLIPModel.from_pretrained`` (``hf``) or open_clip's
``create_model("local-dir:OUT_DIR")`` (``open_clip``) loads (`keras_clip.export_checkpoint`).
Outputs are written under a temporary name and renamed into place.
"""

import argparse
import os

from keras_clip.cli import add_tf_logs_flag, positive_int
from keras_clip.checkpoints import export_checkpoint, load_pretrained
from keras_clip.checkpoints.writer import FORMATS
from keras_clip.saving import load_model, save_model_atomic


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_clip.convert",
        description="Convert a CLIP checkpoint to a Keras .keras file, or (with --to) a model to "
                    "a transformers / open_clip folder.")
    parser.add_argument("checkpoint", help="a checkpoint folder (open_clip hub, transformers, "
                                           "keras-hub preset) or file (.pt, .bin, .pth, "
                                           ".safetensors, .npz); with --to also a .keras model")
    parser.add_argument("output", help="OUT.keras, or with --to the folder to write")
    parser.add_argument("--to", choices=FORMATS, default=None,
                        help="write a transformers (hf) or open_clip hub folder instead of .keras")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (.keras file, or with --to a folder "
                             "holding only an earlier export's files)")
    parser.add_argument("--preset", default=None, help="architecture of a bare weights file "
                                                       "(default: inferred from shapes)")
    parser.add_argument("--activation", default=None, choices=["quick_gelu", "gelu"],
                        help="activation of a bare weights file (default: quick_gelu, with a "
                             "warning); a folder's config decides it")
    parser.add_argument("--text-heads", type=positive_int, default=None,
                        help="text attention heads (default: inferred, text width / 64)")
    parser.add_argument("--vision-heads", type=positive_int, default=None,
                        help="vision attention heads (default: inferred, width / 64)")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if args.to is None and not args.output.endswith(".keras"):
        parser.error(f"output must end in .keras (or pass --to hf|open_clip to write a folder), "
                     f"got {args.output}")
    if args.to is None and os.path.exists(args.output) and not args.overwrite:
        parser.exit(1, f"{parser.prog}: error: {args.output} already exists; pass --overwrite to "
                       "replace it\n")
    overrides = {k: v for k, v in (("activation", args.activation), ("text_heads", args.text_heads),
                                   ("vision_heads", args.vision_heads)) if v is not None}
    try:
        if args.to and args.checkpoint.endswith(".keras"):
            if overrides or args.preset:
                parser.error("--preset / --activation / --*-heads apply to checkpoints, not to a "
                             ".keras model (it has its architecture)")
            import keras_clip
            model = load_model(args.checkpoint, keras_clip.CLIP)
        else:
            model = load_pretrained(args.checkpoint, preset=args.preset, **overrides)
        if args.to:
            export_checkpoint(model, args.output, format=args.to, overwrite=args.overwrite)
            print(f"Wrote {args.output} ({args.to} folder, {model.count_params():,} parameters)")
        else:
            save_model_atomic(model, args.output)
            print(f"Wrote {args.output} ({model.count_params():,} parameters)")
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError,
            TypeError) as e:  # each names the file and the fix
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
