"""keras_clip.saving.load_model's errors, and the CLIP commands that load a model with it
(``keras_clip.train --init-from``, ``keras_clip.wise_ft``, ``keras_clip.evaluate --model``)."""

import json
import zipfile

import keras
import pytest

from keras_clip.model import CLIP
from keras_clip.saving import ModelClassError, load_model, read_keras_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved CLIP, a dVAE, a plain Sequential, a model of a class no module registered, random
    bytes and a truncated archive, all named .keras."""
    from keras_dalle.vae import dvae_from_preset

    root = tmp_path_factory.mktemp("models")
    out = {name: root / f"{name}.keras" for name in
           ("clip", "dvae", "sequential", "unregistered", "random", "truncated")}
    CLIP.from_preset("ViT-Tiny").save(out["clip"])
    dvae_from_preset("dvae-tiny").save(out["dvae"])
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(out["sequential"])
    with zipfile.ZipFile(out["sequential"]) as src, \
            zipfile.ZipFile(out["unregistered"], "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config.update(module="elsewhere.models", class_name="Mystery",
                              registered_name="elsewhere>Mystery")
                data = json.dumps(config)
            dst.writestr(item, data)
    out["random"].write_bytes(bytes(range(256)) * 8)
    data = out["clip"].read_bytes()
    out["truncated"].write_bytes(data[:len(data) // 2])
    return {k: str(v) for k, v in out.items()}


def test_a_clip_loads_and_other_models_are_named_by_class_before_deserialising(files):
    assert isinstance(load_model(files["clip"], CLIP), CLIP)
    for name, held in (("dvae", "DiscreteVAE"), ("sequential", "Sequential"),
                       ("unregistered", r"Mystery \(from elsewhere.models\)")):
        with pytest.raises(ModelClassError, match=rf"^{files[name]} holds a {held}, expected "
                                                  r"CLIP$"):
            load_model(files[name], CLIP)
    assert issubclass(ModelClassError, TypeError)  # what callers caught before
    assert read_keras_config(files["dvae"])["class_name"] == "DiscreteVAE"


@pytest.mark.parametrize("name", ["random", "truncated"])
def test_a_corrupt_archive_is_said_to_exist_but_not_be_readable(files, name):
    # Was (new-user trial): Keras' "File not found: filepath=…" for a file that exists.
    with pytest.raises(ValueError, match=rf"^{files[name]} exists but is not a readable \.keras "
                                         r"archive") as e:
        load_model(files[name], CLIP)
    assert "not found" not in str(e.value)
    with pytest.raises(ValueError, match="exists but is not a readable .keras archive"):
        load_model(files[name])  # without an expected class too


def _run(module, argv, capsys):
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("dvae", "holds a DiscreteVAE, expected CLIP"),
    ("unregistered", "holds a Mystery (from elsewhere.models), expected CLIP"),
    ("random", "exists but is not a readable .keras archive"),
    ("truncated", "exists but is not a readable .keras archive"),
])
def test_the_clip_commands_name_a_wrong_or_corrupt_model_file_in_one_line(files, name, message,
                                                                        capsys, tmp_path):
    # Was (new-user trial): train --init-from crashed with Keras' "Could not locate class
    # 'DiscreteVAE'" traceback; wise_ft / evaluate printed Keras' raw error.
    path = files[name]
    for module, argv in [
            ("keras_clip.train", ["--init-from", path, "--logdir", str(tmp_path / "run"),
                                  "--epochs", "1", "--verbose", "0"]),
            ("keras_clip.wise_ft", ["--zero-shot", files["clip"], "--fine-tuned", path,
                                    "--alpha", "0.5", "--out", str(tmp_path / "mix.keras")]),
            ("keras_clip.evaluate", ["--model", path, "--data", "shapes", "--task",
                                     "similarity", "--out", str(tmp_path / "r.json")])]:
        code, err = _run(module, argv, capsys)
        assert code == 2, module
        assert f"{path} {message}" in err, (module, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (module, err)
    assert not (tmp_path / "mix.keras").exists() and not (tmp_path / "r.json").exists()
