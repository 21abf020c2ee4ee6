"""CLIP's losses under tf.distribute, with global-batch negatives: the symmetric contrastive
(softmax) loss and SigLIP's pairwise sigmoid loss."""

import tensorflow as tf


def gather_features(features):
    """All replicas' rows of ``features`` (n, D) → (n · replicas, D), with gradients.

    ``ReplicaContext.all_gather`` has a gradient (the upstream gradient is summed over replicas
    and sliced back), so every replica's loss trains every other replica's towers — open_clip's
    "gather with grad". Outside tf.distribute (or with one replica) this is the identity.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return features, 0
    return ctx.all_gather(features, axis=0), ctx.replica_id_in_sync_group


def contrastive_loss(image_embeds, text_embeds, logit_scale):
    """Mean over local samples of ``(CE(image→text) + CE(text→image)) / 2`` against the global batch.

    Args:
        image_embeds, text_embeds: L2-normalised float32 (n, D) on this replica; row i of each
            is a matching pair.
        logit_scale: ln of the temperature multiplier (scalar).

    Each replica scores its n rows against all n·R gathered rows; labels are the global indices
    of its own pairs (``arange(n) + n · replica_id``). Averaging the per-replica losses equals
    the loss over the whole global batch (one replica with n·R samples).

    Example:
        >>> loss = contrastive_loss(img, txt, model.logit_scale)   # scalar
    """
    all_images, rank = gather_features(image_embeds)
    all_texts, _ = gather_features(text_embeds)
    n = tf.shape(image_embeds)[0]
    labels = tf.range(n) + n * tf.cast(rank, tf.int32)
    scale = tf.exp(tf.cast(logit_scale, tf.float32))
    logits_per_image = scale * tf.matmul(image_embeds, all_texts, transpose_b=True)  # (n, N)
    logits_per_text = scale * tf.matmul(text_embeds, all_images, transpose_b=True)  # (n, N)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    per_sample = (ce(labels, logits_per_image) + ce(labels, logits_per_text)) / 2
    return tf.reduce_mean(per_sample)


def sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
    Pre-Training", eq. 1; open_clip's ``SigLipLoss``) against the global batch.

    Args:
        image_embeds, text_embeds: L2-normalised float32 (n, D) on this replica; row i of each
            is a matching pair.
        logit_scale: ln of the logit multiplier t (scalar; SigLIP initialises t = 10).
        logit_bias: the learnt bias b (scalar; SigLIP initialises it to -10).

    Every image on this replica is scored against every text of the global batch (texts are
    gathered from all replicas, with gradients): ``z_ij = t · x_i·y_j + b``, label +1 for the
    matching pair and -1 otherwise; the loss is ``-Σ_ij log σ(label_ij · z_ij) / n``. Averaged
    over replicas it equals one device's loss over the whole batch (open_clip's neighbour
    exchange computes the same sum).

    Returns:
        a float32 scalar.
    """
    all_texts, rank = gather_features(text_embeds)
    n = tf.shape(image_embeds)[0]
    big_n = tf.shape(all_texts)[0]
    scale = tf.exp(tf.cast(logit_scale, tf.float32))
    logits = scale * tf.matmul(image_embeds, all_texts, transpose_b=True) + tf.cast(
        logit_bias, tf.float32)  # (n, N)
    positives = tf.one_hot(tf.range(n) + n * tf.cast(rank, tf.int32), big_n)  # (n, N)
    labels = 2.0 * positives - 1.0
    return -tf.reduce_sum(tf.math.log_sigmoid(labels * logits)) / tf.cast(n, tf.float32)


LOSSES = ("contrastive", "siglip")
