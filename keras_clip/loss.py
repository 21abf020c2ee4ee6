"""CLIP's symmetric contrastive loss with global-batch negatives under tf.distribute."""

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
