"""Prompt fidelity (keras_dalle.sampling.fidelity): Wilson intervals, the prompts of each split,
the before/after bookkeeping on perfect and half-perfect samples, and the CLI.

The run on a real (tiny, random) DALL·E is in tests/test_dalle_sampling.py."""

import json
import types

import numpy as np
import pytest

from keras_clip.data.shapes import BACKGROUND, HELDOUT_PAIRS, generate_shapes
from keras_clip.data.shapes_reader import caption_objects
from keras_clip.model import CLIP
from keras_dalle.sampling import fidelity
from keras_dalle.sampling.fidelity import (SPLITS, fidelity_prompts, markdown_table, main,
                                           prompt_fidelity, wilson_interval)


def test_wilson_interval_matches_hand_computed_values():
    # z = 1.96, z² = 3.8416; interval = (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    # k=0, n=10:    (0 + 0.19208 ± 1.96·sqrt(0.009604)) / 1.38416 = (0.19208 ± 0.19208) / 1.38416
    #               = (0, 0.38416 / 1.38416) → (0, 0.27754)
    # k=5, n=10:    (0.5 + 0.19208 ± 1.96·sqrt(0.025 + 0.009604)) / 1.38416
    #               = (0.69208 ± 0.36460) / 1.38416 → (0.23659, 0.76341)
    # k=200, n=200: (1 + 0.009604 ± 1.96·sqrt(3.8416 / 160000)) / 1.019208
    #               = (1.009604 ± 0.009604) / 1.019208 → (1 / 1.019208, 1) = (0.98115, 1)
    for (k, n), expected in [((0, 10), (0.0, 0.27754)), ((5, 10), (0.23659, 0.76341)),
                             ((200, 200), (0.98115, 1.0))]:
        np.testing.assert_allclose(wilson_interval(k, n), expected, atol=5e-6)
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high and high - low < wilson_interval(3, 10)[1] - wilson_interval(3, 10)[0]
    assert wilson_interval(np.int64(3), np.int64(10)) == wilson_interval(3, 10)
    for args, message in [((0, 0), r"n must be >= 1, got 0"), ((11, 10), r"k must be in \[0, "
                          r"n=10\], got 11"), ((-1, 10), r"got -1"), ((1.0, 10), r"k must be an "
                          r"integer, got 1.0"), ((1, True), r"n must be an integer, got True")]:
        with pytest.raises(ValueError, match=message):
            wilson_interval(*args)
    with pytest.raises(ValueError, match=r"z must be > 0, got 0"):
        wilson_interval(1, 2, z=0)


def test_each_split_has_the_prompts_it_says():
    seen = fidelity_prompts("seen", 20)
    assert len(set(seen)) == 20
    for p in seen:
        (obj,) = caption_objects(p)["objects"]
        assert (obj["colour"], obj["shape"]) not in HELDOUT_PAIRS
    held = fidelity_prompts("heldout", 20)
    assert len(held) == 20 and len(set(held)) == 10 and held[:10] == held[10:]  # 5 pairs × 2 sizes
    for p in held:
        (obj,) = caption_objects(p)["objects"]
        assert (obj["colour"], obj["shape"]) in HELDOUT_PAIRS
    two = fidelity_prompts("two-object", 20)
    assert len(set(two)) == 20 and all(caption_objects(p)["relation"] for p in two)
    assert fidelity_prompts("seen", 5, seed=1) != fidelity_prompts("seen", 5, seed=0)
    assert fidelity_prompts("seen", 5) == seen[:5]
    with pytest.raises(ValueError, match=r"split must be one of \('seen', 'heldout', "
                                         r"'two-object'\), got 'val'"):
        fidelity_prompts("val", 5)
    with pytest.raises(ValueError, match=r"num_prompts must be an integer >= 1, got 0"):
        fidelity_prompts("seen", 0)


@pytest.fixture(scope="module")
def clip():
    return CLIP.from_preset("ViT-Tiny")


@pytest.fixture(scope="module")
def rendered():
    """caption → the renderer's own 64 px image of it, for the captions the splits use."""
    out = {}
    for split in ("val", "heldout"):
        data = generate_shapes(1024, split=split, image_size=64, seed=0)
        for caption, image in zip(data["captions"], data["images"]):
            out.setdefault(caption, image)
    return out


def _fake_sampler(monkeypatch, rendered, good):
    """`generate` → sample j of a prompt is its rendered image if good(j), else a blank one;
    `clip_scores` → 1 for an image with an object, 0 for a blank one. Returns the call log."""
    calls = []
    blank = np.tile(BACKGROUND, (64, 64, 1))

    def generate(model, prompts, vae=None, num_samples=1, seed=0, **sampling):
        calls.append({"prompts": list(prompts), "num_samples": num_samples, "seed": seed,
                      "sampling": sampling})
        images = [[rendered[p] if good(j) else blank for j in range(num_samples)]
                  for p in prompts]
        return {"images": np.asarray(images, np.float32) / 255.0}

    def clip_scores(clip, images, prompts):
        assert len(images) == len(prompts)
        return (np.abs(images - BACKGROUND / 255.0).max(axis=(1, 2, 3)) > 0.2).astype(np.float32)

    monkeypatch.setattr(fidelity, "generate", generate)
    monkeypatch.setattr(fidelity, "clip_scores", clip_scores)
    return calls


def test_perfect_samples_score_one_before_and_after(monkeypatch, rendered, clip):
    calls = _fake_sampler(monkeypatch, rendered, good=lambda j: True)
    r = prompt_fidelity(None, None, clip, num_prompts=20, num_samples=16, group=8, chunk=4)
    for split in SPLITS:
        s = r["splits"][split]
        assert s["before"] == {"k": 320, "n": 320, "rate": 1.0,
                               "interval": list(wilson_interval(320, 320))}
        assert s["after"]["k"] == s["after"]["n"] == 40 and s["errors"] == {}
        assert all(p["before"] == [16, 16] and p["after"] == [2, 2] for p in s["per_prompt"])
    # 5 chunks of 4 prompts per split, each with its own seed
    assert len(calls) == 15 and all(len(c["prompts"]) == 4 for c in calls)
    assert len({c["seed"] for c in calls}) == 15


def test_reranking_keeps_the_best_sample_of_each_group(monkeypatch, rendered, clip):
    # One sample in four shows the prompt, the others are blank: 25% before; CLIP (here: any
    # object beats none) finds it in every group of 4 → 100% after; groups of 2 → half of them.
    _fake_sampler(monkeypatch, rendered, good=lambda j: j % 4 == 0)
    for group, after in ((4, 1.0), (2, 0.5)):
        r = prompt_fidelity(None, None, clip, splits=["heldout", "two-object"], num_prompts=6,
                            num_samples=8, group=group, chunk=3)
        for s in r["splits"].values():
            assert s["before"]["k"] == 12 and s["before"]["n"] == 48
            assert s["after"]["rate"] == after and s["after"]["n"] == 48 // group
            assert s["errors"] == {"no object": 36}
    without = prompt_fidelity(None, None, None, splits=["seen"], num_prompts=2, num_samples=3,
                              group=2)
    assert without["splits"]["seen"]["after"] is None
    assert without["splits"]["seen"]["before"]["k"] == 2  # sample 0 of each prompt


def test_prompt_fidelity_argument_errors_are_named(clip):
    for kwargs, error, message in [
        (dict(splits=["val"]), ValueError, r"splits must be names of \('seen', 'heldout', "
                                           r"'two-object'\), got \['val'\]"),
        (dict(splits=[]), ValueError, r"splits must be names of"),
        (dict(num_samples=10, group=8, clip=clip), ValueError,
         r"num_samples \(10\) must be a multiple of group \(8\)"),
        (dict(num_samples=0), ValueError, r"num_samples must be an integer >= 1, got 0"),
        (dict(group=0), ValueError, r"group must be an integer >= 1, got 0"),
        (dict(num_prompts=2.5), ValueError, r"num_prompts must be an integer >= 1, got 2.5"),
        (dict(clip="clip.keras"), TypeError, r"clip must be a keras_clip.CLIP or None, got str"),
    ]:
        with pytest.raises(error, match=message):
            prompt_fidelity(None, None, **{"clip": None, **kwargs})


def test_cli_prints_the_table_and_writes_the_json(monkeypatch, rendered, clip, tmp_path, capsys):
    _fake_sampler(monkeypatch, rendered, good=lambda j: j % 2 == 0)
    loaded = []

    def load_model(path, cls):  # a stand-in DALL·E: the fake sampler never calls it
        loaded.append((path, cls.__name__))
        return clip if cls is CLIP else types.SimpleNamespace(image_vocab_size=16)

    from keras_dalle.sampling import models

    monkeypatch.setattr(models, "load_model", load_model)
    out = tmp_path / "fidelity.json"
    result = main(["--model", "d.keras", "--vae", "v.keras", "--clip", "c.keras", "--splits",
                   "seen", "heldout", "--num-prompts", "12", "--num-samples", "4", "--group",
                   "2", "--top-k", "5", "--json", str(out)])
    assert loaded == [("d.keras", "DALLE"), ("v.keras", "DiscreteVAE"), ("c.keras", "CLIP")]
    printed = capsys.readouterr().out
    assert printed.startswith(markdown_table(result))
    assert "| split | prompts × samples | before: k/n (rate, 95% CI) | after best-of-2: k/n " \
           "(rate, 95% CI) |" in printed
    low, high = wilson_interval(24, 48)
    assert f"| seen | 12 × 4 | 24/48 (50.0%, {100 * low:.1f}–{100 * high:.1f}%) | 24/24 (100.0%," \
        in printed
    assert "| heldout | 12 (10 distinct) × 4 |" in printed
    assert "seen failures before reranking: no object 24" in printed
    saved = json.loads(out.read_text())
    assert saved["splits"]["heldout"]["before"] == result["splits"]["heldout"]["before"]
    assert saved["sampling"]["top_k"] == 5 and list(saved["splits"]) == ["seen", "heldout"]
    # argument errors are reported before any model is loaded
    loaded.clear()
    for argv, message in [(["--num-samples", "10"], r"--num-samples \(10\) must be a multiple "
                                                     r"of --group \(8\)"),
                          (["--group", "0"], r"--group must be >= 1, got 0")]:
        with pytest.raises(SystemExit):
            main(["--model", "d.keras", "--vae", "v.keras", "--clip", "c.keras"] + argv)
        assert message.replace("\\", "") in capsys.readouterr().err
    assert loaded == []


@pytest.mark.parametrize("module", ["keras_dalle.fidelity", "keras_dalle.sampling.generate"])
def test_bad_sampling_options_are_usage_errors_before_any_model_is_loaded(module, monkeypatch,
                                                                           capsys, tmp_path):
    # Was (new-user trial): checked by the sampler after loading the models, as a ValueError
    # traceback.
    import importlib

    from keras_dalle.sampling import models

    loaded = []

    def load_model(path, cls):
        loaded.append(path)
        return types.SimpleNamespace(image_vocab_size=16)

    monkeypatch.setattr(models, "load_model", load_model)
    main = importlib.import_module(module).main
    base = ["--model", "d.keras", "--vae", "v.keras"]
    if module != "keras_dalle.fidelity":
        base = ["a red circle", "--out", str(tmp_path / "g.png")] + base
    for argv, message in [
            (["--temperature", "-0.5"], "argument --temperature: expected a number >= 0, got -0.5"),
            (["--temperature", "nan"], "argument --temperature: expected a number >= 0, got nan"),
            (["--top-p", "0"], "argument --top-p: expected a number in (0, 1], got 0"),
            (["--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got 1.5"),
            (["--top-k", "0"], "argument --top-k: expected a positive integer (>= 1), got 0"),
            (["--top-k", "-3"], "argument --top-k: expected a positive integer (>= 1), got -3")]:
        with pytest.raises(SystemExit) as exit_info:
            main(base + argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert loaded == []
    # The vocabulary bound needs the model: checked right after loading, still a usage error.
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--top-k", "17"])
    assert exit_info.value.code == 2
    assert ("argument --top-k: expected at most the model's image vocabulary size 16, got 17"
            in capsys.readouterr().err)
    assert loaded[:2] == ["d.keras", "v.keras"]


def test_fidelity_help_shows_the_defaults():
    import contextlib
    import io
    import re

    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        main(["--help"])
    options = {block.split()[0]: " ".join(block.split())  # option → its help, one line
               for block in re.split(r"\n  (?=--)", out.getvalue())[1:]}
    for option, default in (("--num-prompts", 20), ("--num-samples", 80), ("--group", 8),
                            ("--chunk", 4), ("--seed", 0), ("--temperature", 1.0)):
        assert f"(default: {default})" in options[option], options[option]
    assert "(default: seen heldout two-" in options["--splits"]  # (wrapped at the hyphen)
    assert "default" not in options["--json"]  # None: nothing to show


def test_a_splits_samples_do_not_depend_on_the_other_splits_asked_for(monkeypatch, rendered,
                                                                       clip):
    # Was (new-user trial): --splits heldout seen gave other "seen" samples than the default run.
    calls = _fake_sampler(monkeypatch, rendered, good=lambda j: True)
    prompt_fidelity(None, None, clip, num_prompts=4, num_samples=8, group=8, chunk=4)
    everything = {tuple(c["prompts"]): c["seed"] for c in calls}
    calls.clear()
    prompt_fidelity(None, None, clip, splits=["two-object", "seen"], num_prompts=4,
                    num_samples=8, group=8, chunk=4)
    assert len(calls) == 2
    assert all(everything[tuple(c["prompts"])] == c["seed"] for c in calls)


@pytest.mark.parametrize("module", ["keras_dalle.fidelity", "keras_dalle.sampling.generate"])
def test_the_clis_name_a_missing_or_wrong_kind_of_model_as_a_usage_error(tmp_path, module, capsys):
    # Was (new-user trial): a Python traceback. A saved CLIP passed as --model names both.
    import importlib

    from keras_clip.model import CLIP

    clip_path = tmp_path / "clip.keras"
    CLIP.from_preset("ViT-Tiny").save(clip_path)
    main = importlib.import_module(module).main
    extra = [] if module == "keras_dalle.fidelity" else ["a red circle", "--out",
                                                         str(tmp_path / "g.png")]
    for model, expected in ((tmp_path / "none.keras", "DALLE file not found"),
                            (clip_path, "holds a CLIP, expected DALLE")):
        with pytest.raises(SystemExit) as exit_info:
            main(extra + ["--model", str(model), "--vae", str(clip_path)])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
