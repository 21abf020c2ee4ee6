"""Convert a CLIP checkpoint to a Keras ``.keras`` file.

    python -m keras_clip.convert CHECKPOINT OUT.keras [--preset ViT-B-32] [--activation gelu]

Without --preset the architecture is inferred from the tensor shapes, with OpenAI's 64-wide
attention heads; for widths that are not multiples of 64 pass --preset or --text-heads /
--vision-heads. The reading is `keras_clip.load_pretrained` (`keras_clip.checkpoints`); the file
is written to a temporary name and renamed into place.
"""

import argparse

from keras_clip.cli import add_tf_logs_flag, positive_int
from keras_clip.checkpoints import load_pretrained
from keras_clip.saving import save_model_atomic


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_clip.convert",
                                     description="Convert a CLIP checkpoint to a Keras .keras file.")
    parser.add_argument("checkpoint", help=".pt (OpenAI TorchScript), .bin/.pt/.pth (open_clip), "
                                           ".safetensors or .npz")
    parser.add_argument("output", help="output path ending in .keras")
    parser.add_argument("--preset", default=None, help="architecture (default: inferred from shapes)")
    parser.add_argument("--activation", default=None, choices=["quick_gelu", "gelu"])
    parser.add_argument("--text-heads", type=positive_int, default=None,
                        help="text attention heads (default: inferred, text width / 64)")
    parser.add_argument("--vision-heads", type=positive_int, default=None,
                        help="vision attention heads (default: inferred, width / 64)")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"output must end in .keras, got {args.output}")
    overrides = {k: v for k, v in (("activation", args.activation), ("text_heads", args.text_heads),
                                   ("vision_heads", args.vision_heads)) if v is not None}
    try:
        model = load_pretrained(args.checkpoint, preset=args.preset, **overrides)
    except (ValueError, FileNotFoundError, ImportError) as e:  # each names the file and the fix
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    save_model_atomic(model, args.output)
    print(f"Wrote {args.output} ({model.count_params():,} parameters)")


if __name__ == "__main__":
    main()
