"""Convert a CLIP checkpoint to a Keras ``.keras`` file.

    python -m keras_clip.convert CHECKPOINT OUT.keras [--preset ViT-B-32] [--activation gelu]

The reading is `keras_clip.load_pretrained` (`keras_clip.checkpoints`); the file is written to a
temporary name and renamed into place.
"""

import argparse

from keras_clip.cli import add_tf_logs_flag
from keras_clip.checkpoints import load_pretrained
from keras_clip.saving import save_model_atomic


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a CLIP checkpoint to a Keras .keras file.")
    parser.add_argument("checkpoint", help=".pt (OpenAI TorchScript), .bin/.pt/.pth (open_clip), "
                                           ".safetensors or .npz")
    parser.add_argument("output", help="output path ending in .keras")
    parser.add_argument("--preset", default=None, help="architecture (default: inferred from shapes)")
    parser.add_argument("--activation", default=None, choices=["quick_gelu", "gelu"])
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"output must end in .keras, got {args.output}")
    overrides = {"activation": args.activation} if args.activation else {}
    model = load_pretrained(args.checkpoint, preset=args.preset, **overrides)
    save_model_atomic(model, args.output)
    print(f"Wrote {args.output} ({model.count_params():,} parameters)")


if __name__ == "__main__":
    main()
