"""The dVAE's training schedules: gumbel-softmax temperature and KL weight as functions of the
optimizer step (Ramesh et al. 2021, appendix A.2)."""

import dataclasses
import math

import keras
from keras import ops

from keras_clip.validation import check_positive_int


def cosine_schedule(step, start, end, steps):
    """Cosine interpolation from `start` (step 0) to `end` (step >= `steps`), then constant.

    value(t) = end + (start − end) · ½ · (1 + cos(π · min(t / steps, 1))). `steps` <= 0 means
    `end` from the start. `step` may be a Python number or a (symbolic) tensor; returns float32.
    """
    step = ops.cast(step, "float32")
    if steps <= 0:
        return ops.zeros_like(step) + float(end)
    frac = ops.minimum(ops.maximum(step / float(steps), 0.0), 1.0)
    return float(end) + (float(start) - float(end)) * 0.5 * (1.0 + ops.cos(math.pi * frac))


@keras.saving.register_keras_serializable(package="keras_dalle")
@dataclasses.dataclass
class VAETrainingSchedule:
    """Temperature and KL-weight schedules of dVAE training (defaults: the DALL·E paper).

    τ(t) goes `temperature_start` → `temperature_end` over `temperature_steps` updates and β(t)
    goes `kl_weight_start` → `kl_weight_end` over `kl_warmup_steps` updates, both on a cosine
    schedule (`cosine_schedule`), then stay constant. t is the optimizer's iteration counter.

    Paper: τ 1 → 1/16 over the first 150,000 updates, β 0 → 6.6 over the first 5,000.

    `marginal_kl_weight` γ (constant; 0 in the paper) adds γ·`marginal_kl(logits)`, extra
    weight on the codebook-usage part of the KL term (see `marginal_kl`).
    """

    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16.0
    temperature_steps: int = 150_000
    kl_weight_start: float = 0.0
    kl_weight_end: float = 6.6
    kl_warmup_steps: int = 5_000
    marginal_kl_weight: float = 0.0

    def __post_init__(self):
        for name in ("temperature_start", "temperature_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            setattr(self, name, float(value))
        for name in ("kl_weight_start", "kl_weight_end", "marginal_kl_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        for name in ("temperature_steps", "kl_warmup_steps"):
            setattr(self, name, check_positive_int(name, getattr(self, name), minimum=0))

    def temperature(self, step):
        """Gumbel-softmax temperature τ at optimizer step `step` (float32)."""
        return cosine_schedule(step, self.temperature_start, self.temperature_end,
                               self.temperature_steps)

    def kl_weight(self, step):
        """KL weight β at optimizer step `step` (float32)."""
        return cosine_schedule(step, self.kl_weight_start, self.kl_weight_end,
                               self.kl_warmup_steps)

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def coerce(cls, value):
        """None → the paper's schedule; a dict → `cls(**dict)`; an instance → itself."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"Unknown training_schedule keys {unknown}; expected a subset "
                                 f"of {[f.name for f in dataclasses.fields(cls)]}")
            return cls(**value)
        raise TypeError("training_schedule must be None, a dict or a VAETrainingSchedule, got "
                        f"{type(value).__name__}")
