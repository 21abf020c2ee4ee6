"""The DALL·E transformer's honest baselines: the per-position unigram and shuffled captions."""

import numpy as np
import pytest

from keras_dalle.transformer.data import (positional_unigram_cross_entropy, shuffled_captions,
                                          unigram_cross_entropy)


def test_positional_unigram_is_exact_on_a_position_determined_grid():
    # Every example has token j at position j: a per-position histogram predicts it with
    # probability (count + 1) / (count + V), the position-free unigram only with 1 / 4.
    n, vocab = 50, 4
    tokens = np.tile(np.arange(4), (n, 1)).reshape(n, 2, 2)
    expected = -np.log((n + 1) / (n + vocab))
    assert positional_unigram_cross_entropy(tokens, tokens, vocab) == pytest.approx(expected)
    assert unigram_cross_entropy(tokens, tokens, vocab) == pytest.approx(
        -np.log((n + 1) / (4 * n + vocab)))


def test_positional_unigram_matches_a_hand_count():
    train = np.array([[0, 1], [0, 2], [1, 2]])
    evaluate = np.array([[1, 2]])
    # position 0: counts (2, 1, 0) + 1 → p(1) = 2/6; position 1: counts (0, 1, 2) + 1 → p(2) = 3/6
    expected = -(np.log(2 / 6) + np.log(3 / 6)) / 2
    assert positional_unigram_cross_entropy(train, evaluate, 3) == pytest.approx(expected)


def test_positional_unigram_rejects_a_different_grid():
    with pytest.raises(ValueError, match="4 and 9 positions"):
        positional_unigram_cross_entropy(np.zeros((2, 2, 2), int), np.zeros((2, 3, 3), int), 4)


def test_shuffled_captions_gives_every_example_another_caption_and_keeps_the_images():
    n = 40
    arrays = {"text_token_ids": np.arange(n)[:, None] * np.ones((1, 5), int),
              "image_tokens": np.arange(n)[:, None, None] * np.ones((1, 2, 2), int)}
    out = shuffled_captions(arrays, seed=3)
    moved = out["text_token_ids"][:, 0]
    assert sorted(moved) == list(range(n))            # a permutation of the captions
    assert np.all(moved != np.arange(n))              # and a derangement
    assert out["image_tokens"] is arrays["image_tokens"]
    np.testing.assert_array_equal(shuffled_captions(arrays, seed=3)["text_token_ids"],
                                  out["text_token_ids"])  # seeded
    with pytest.raises(ValueError, match="at least 2 examples"):
        shuffled_captions({"text_token_ids": np.zeros((1, 5), int)})
