"""dVAE training losses (Ramesh et al. 2021, section 2.1 and appendix A.3): the logit-Laplace
pixel mapping and likelihood, a Gaussian alternative, the gumbel-softmax relaxation and the KL
terms to the uniform prior."""

import math

from keras import ops

LOGIT_LAPLACE_EPS = 0.1
RECONSTRUCTION_LOSSES = ("logit_laplace", "gaussian")


def map_pixels(x, eps=LOGIT_LAPLACE_EPS):
    """Maps pixels in [0, 1] to [eps, 1 - eps]: `(1 - 2·eps)·x + eps` (the dVAE encoder input)."""
    x = ops.convert_to_tensor(x, dtype="float32")
    return (1.0 - 2.0 * eps) * x + eps


def unmap_pixels(x, eps=LOGIT_LAPLACE_EPS):
    """Inverse of `map_pixels`, clipped to [0, 1]: `clip((x - eps) / (1 - 2·eps), 0, 1)`."""
    x = ops.convert_to_tensor(x, dtype="float32")
    return ops.clip((x - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)


def gumbel_softmax(logits, temperature, noise=None, seed=None):
    """Relaxed one-hot sample softmax((logits + g) / τ) over the last axis, g ~ Gumbel(0, 1).

    `noise`: optional pre-drawn Gumbel noise (same shape as `logits`, for tests); otherwise it is
    drawn as g = −ln(−ln u), u ~ U[0, 1) (`seed`: optional op-level seed).
    """
    logits = ops.cast(logits, "float32")
    if noise is None:
        noise = sample_gumbel(ops.shape(logits), seed=seed)
    return ops.softmax((logits + ops.cast(noise, "float32")) / temperature, axis=-1)


def sample_gumbel(shape, seed=None):
    """Standard Gumbel noise −ln(−ln u), u ~ U[0, 1), float32 (TensorFlow RNG, replica-safe)."""
    import tensorflow as tf

    u = tf.random.uniform(shape, 0.0, 1.0, dtype=tf.float32, seed=seed)
    tiny = 1e-20
    return -tf.math.log(-tf.math.log(u + tiny) + tiny)


def kl_to_uniform(logits):
    """KL(softmax(logits) ‖ uniform over the K codes) per position: Σ q ln q + ln K = ln K − H(q).

    logits [..., K] → KL [...] in nats (float32).
    """
    logits = ops.cast(logits, "float32")
    log_q = ops.log_softmax(logits, axis=-1)
    k = ops.shape(logits)[-1]
    return ops.sum(ops.exp(log_q) * log_q, axis=-1) + ops.log(ops.cast(k, "float32"))


def marginal_kl(logits):
    """h·w · KL(q̄ ‖ uniform), q̄ = the batch's mean posterior over all token positions.

    The paper's KL term decomposes as Σ_t KL(q_t ‖ u) = h·w · KL(q̄ ‖ u) + Σ_t KL(q_t ‖ q̄): a
    codebook-usage part (this function, in the same per-image units) and the information the
    tokens carry. `VAETrainingSchedule.marginal_kl_weight` adds extra weight on the usage part
    only (0 in the paper's recipe). Returned as a scalar (it is a batch statistic; under a
    distribution strategy, of the replica's batch).
    """
    logits = ops.cast(logits, "float32")
    q = ops.softmax(logits, axis=-1)
    k = ops.shape(logits)[-1]
    q_bar = ops.mean(ops.reshape(q, (-1, k)), axis=0)
    kl = ops.sum(q_bar * ops.log(ops.maximum(q_bar, 1e-30))) + ops.log(ops.cast(k, "float32"))
    tokens_per_image = ops.cast(ops.shape(logits)[1] * ops.shape(logits)[2], "float32")
    return tokens_per_image * kl


def logit_laplace_nll(x, mu, log_b):
    """Elementwise −ln f(x | μ, b) of the logit-Laplace density (Ramesh et al. 2021, eq. 2).

    f(x | μ, b) = 1 / (2 b x (1 − x)) · exp(−|logit(x) − μ| / b) for x in (0, 1); here x are
    mapped pixels in [ε, 1 − ε] (`map_pixels`), μ the decoder's location maps and `log_b` = ln b
    its log-scale maps. Returns ln 2 + ln b + ln x + ln(1 − x) + |logit(x) − μ| · exp(−ln b).
    """
    x = ops.cast(x, "float32")
    mu = ops.cast(mu, "float32")
    log_b = ops.cast(log_b, "float32")
    log_x, log_1mx = ops.log(x), ops.log(1.0 - x)
    return (math.log(2.0) + log_b + log_x + log_1mx
            + ops.abs(log_x - log_1mx - mu) * ops.exp(-log_b))


def gaussian_nll(x, mean, sigma):
    """Elementwise −ln N(x | mean, σ²) = (x − mean)² / (2σ²) + ln(σ·√(2π)) (fixed σ).

    The `reconstruction_loss="gaussian"` alternative to the paper's logit-Laplace: x are mapped
    pixels and mean = sigmoid(μ), so it is a (scaled) squared error in pixel space with the same
    reconstruction `unmap(sigmoid(μ))`; the ln b maps are unused.
    """
    x = ops.cast(x, "float32")
    mean = ops.cast(mean, "float32")
    return ops.square(x - mean) / (2.0 * sigma ** 2) + math.log(sigma * math.sqrt(2.0 * math.pi))
