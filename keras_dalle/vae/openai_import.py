"""Load OpenAI's dVAE weights (the `dall_e` package's Encoder / Decoder) into `DiscreteVAE`.

Supported files (encoder and decoder are separate files, as OpenAI ships them):

* `.pkl` — OpenAI's official `encoder.pkl` / `decoder.pkl`: whole pickled torch modules. Needs
  torch and the `dall_e` package (the pickle refers to its classes). Only the module's
  `state_dict()` is read, so newer torch's `'Upsample' object has no attribute
  'recompute_scale_factor'` (raised by the old pickled Upsample's forward) does not matter.
* `.pt` / `.pth` / `.bin` — plain torch state dicts (`torch.load(weights_only=True)`).
* `.npz` and `.safetensors` — plain arrays under the same keys; no torch needed.

Keys follow dall_e: `blocks.input.w`, `blocks.group_2.block_1.id_path.w`,
`blocks.group_1.block_2.res_path.conv_3.b`, `blocks.output.conv.w`, … Conv weights are torch
OIHW `(out, in, k, k)` and are transposed to Keras HWIO; biases are `(out,)`.

Example:
    vae = load_openai_dvae("encoder.pkl", "decoder.pkl")
    tokens = vae.encode(images)          # [B, 256, 256, 3] in [0, 1] → int32 [B, 32, 32]
"""

import os
import re

import numpy as np

from keras_clip.checkpoints.reader import numpy_state_dict, read_state_dict
from keras_dalle.vae.model import DiscreteVAE

__all__ = [
    "load_openai_dvae",
    "dvae_from_state_dicts",
    "infer_dvae_config",
    "dall_e_state_dicts",
]

_GROUP_RE = re.compile(r"^blocks\.group_(\d+)\.")
_BLOCK_RE = re.compile(r"^blocks\.group_1\.block_(\d+)\.")


def _shape(state, key, ndim):
    value = state.get(key)
    if value is None or value.ndim != ndim:
        return None
    return value.shape


def _count(state, pattern):
    found = {int(m.group(1)) for m in map(pattern.match, state) if m}
    return max(found) if found else None


def infer_dvae_config(encoder_state, decoder_state, encoder_source="encoder",
                      decoder_source="decoder"):
    """Infers DiscreteVAE arguments from dall_e state-dict shapes.

    Returns a dict with whichever of num_channels, n_hid, group_count, n_blk_per_group,
    vocab_size, n_init and output_channels could be read. Raises ValueError when the encoder and
    decoder disagree.
    """
    enc, dec = {}, {}
    shape = _shape(encoder_state, "blocks.input.w", 4)
    if shape:
        enc["n_hid"], enc["num_channels"] = shape[0], shape[1]
    shape = _shape(encoder_state, "blocks.output.conv.w", 4)
    if shape:
        enc["vocab_size"] = shape[0]
    shape = _shape(decoder_state, "blocks.input.w", 4)
    if shape:
        dec["n_init"], dec["vocab_size"] = shape[0], shape[1]
    shape = _shape(decoder_state, "blocks.output.conv.w", 4)
    if shape:
        dec["output_channels"], dec["n_hid"] = shape[0], shape[1]
    for state, out in ((encoder_state, enc), (decoder_state, dec)):
        groups, blocks = _count(state, _GROUP_RE), _count(state, _BLOCK_RE)
        if groups:
            out["group_count"] = groups
        if blocks:
            out["n_blk_per_group"] = blocks
    conflicts = [f"{k}: {encoder_source} has {enc[k]}, {decoder_source} has {dec[k]}"
                 for k in sorted(set(enc) & set(dec)) if enc[k] != dec[k]]
    if conflicts:
        raise ValueError("the dVAE encoder and decoder weights do not fit one DiscreteVAE "
                         "configuration: " + "; ".join(conflicts))
    return {k: int(v) for k, v in {**enc, **dec}.items()}


def _expected(net):
    """{dall_e key: (torch shape, keras variable, is_kernel)} for an encoder or decoder."""
    out = {}
    for prefix, conv in net.dall_e_conv_layers().items():
        kh, kw, n_in, n_out = conv.kernel.shape
        out[f"{prefix}.w"] = ((n_out, n_in, kh, kw), conv.kernel, True)
        out[f"{prefix}.b"] = ((n_out,), conv.bias, False)
    return out


def _check_and_assign(net, state, source, config):
    expected = _expected(net)
    missing = [f"{k} (expected shape {shape})" for k, (shape, _, _) in expected.items()
               if k not in state]
    unexpected = [f"{k} (shape {tuple(state[k].shape)})" for k in state if k not in expected]
    misshaped = [f"{k}: expected shape {shape}, got {tuple(state[k].shape)}"
                 for k, (shape, _, _) in expected.items()
                 if k in state and tuple(state[k].shape) != shape]
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mis-shaped keys", misshaped)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                parts.append(f"{title} ({len(items)}): " + "; ".join(shown))
        raise ValueError(f"{source}: dall_e {net.name} weights do not match DiscreteVAE("
                         f"{', '.join(f'{k}={v}' for k, v in sorted(config.items()))}) — "
                         + " | ".join(parts))
    for key, (_, variable, is_kernel) in expected.items():
        value = state[key]
        if is_kernel:
            value = np.transpose(value, (2, 3, 1, 0))  # OIHW → HWIO
        variable.assign(value)


def dvae_from_state_dicts(encoder_state, decoder_state, encoder_source="<encoder state dict>",
                          decoder_source="<decoder state dict>", **config_overrides):
    """Builds a DiscreteVAE from dall_e encoder/decoder state dicts (numpy or torch values).

    The configuration is inferred from the tensor shapes; `config_overrides` (e.g. image_size,
    dtype, name) take precedence. Missing, unexpected or mis-shaped keys raise ValueError.
    """
    encoder_state = numpy_state_dict(encoder_state, encoder_source)
    decoder_state = numpy_state_dict(decoder_state, decoder_source)
    config = infer_dvae_config(encoder_state, decoder_state, encoder_source, decoder_source)
    config.update(config_overrides)
    vae = DiscreteVAE(**config)  # built in its constructor
    shown = {k: v for k, v in config.items() if k not in ("dtype", "name")}
    _check_and_assign(vae.encoder, encoder_state, encoder_source, shown)
    _check_and_assign(vae.decoder, decoder_state, decoder_source, shown)
    return vae


def load_openai_dvae(encoder_path, decoder_path, **config_overrides):
    """Loads OpenAI's dVAE (`encoder.pkl`, `decoder.pkl`, or .pt/.pth/.bin/.npz/.safetensors
    state dicts with dall_e keys) into a `DiscreteVAE`.

    Example:
        vae = load_openai_dvae("encoder.pkl", "decoder.pkl")
        vae = load_openai_dvae("enc.safetensors", "dec.safetensors", image_size=128)
    """
    encoder_path, decoder_path = os.fspath(encoder_path), os.fspath(decoder_path)
    return dvae_from_state_dicts(read_state_dict(encoder_path, "dVAE encoder weights"),
                                 read_state_dict(decoder_path, "dVAE decoder weights"),
                                 encoder_source=encoder_path, decoder_source=decoder_path,
                                 **config_overrides)


def dall_e_state_dicts(vae):
    """The inverse mapping: (encoder_state, decoder_state) as {dall_e key: float32 numpy}.

    Every array is C-contiguous (the kernels are copied after the HWIO → OIHW transpose), so
    the dicts can go straight to `safetensors.numpy.save_file` or `np.savez`.
    """
    out = []
    for net in (vae.encoder, vae.decoder):
        state = {}
        for key, (_, variable, is_kernel) in _expected(net).items():
            value = np.asarray(variable.numpy(), dtype=np.float32)
            if is_kernel:
                value = np.transpose(value, (3, 2, 0, 1))  # HWIO → OIHW
            state[key] = np.ascontiguousarray(value)
        out.append(state)
    return tuple(out)
