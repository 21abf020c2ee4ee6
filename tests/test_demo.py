"""`python -m keras_clip.demo` needs nothing but the installed package: no tests/ files, no
scikit-image; and the open_clip state-dict writer it shows (`keras_clip.checkpoints.state_dict`)."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from keras_clip.checkpoints import load_pretrained, state_dict

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_HEADS = {"clip_vit_tiny": dict(text_heads=2, vision_heads=2), "clip_rn_tiny": dict(text_heads=2)}


@pytest.mark.parametrize("name", sorted(TINY_HEADS))
def test_state_dict_writes_back_the_open_clip_file_it_was_loaded_from(name):
    reference = load_file(os.path.join(FIXTURES, name, "state_dict.safetensors"))
    written = state_dict(load_pretrained(reference, **TINY_HEADS[name]))
    ignored = [k for k in reference if k.endswith("num_batches_tracked") or k == "attn_mask"]
    assert set(written) == set(reference) - set(ignored)
    for key, value in written.items():
        assert value.dtype == np.float32 and value.shape == reference[key].shape, key
        np.testing.assert_array_equal(value, reference[key], err_msg=key)


# Runs the demo as `python -m` would, from a directory outside the repository, with scikit-image
# made unimportable and every file opened under tests/ recorded.
_GUARDED_DEMO = textwrap.dedent("""
    import os, runpy, sys
    sys.modules["skimage"] = None
    tests, opened = sys.argv[1], []
    sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str)
                     and os.path.abspath(args[0]).startswith(tests) and opened.append(args[0]))
    sys.argv = ["keras_clip.demo"]
    runpy.run_module("keras_clip.demo", run_name="__main__", alter_sys=True)
    assert not opened, opened
    print("no tests/ file opened")
""")


def _check_demo_output(stdout):
    assert "in-graph tokenizer agrees: True" in stdout
    assert "text features identical: True" in stdout
    assert "[4/4] zero-shot over the 30 shapes classes" in stdout


def test_demo_needs_no_test_fixture_and_no_scikit_image(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", _GUARDED_DEMO, str(ROOT / "tests")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _check_demo_output(run.stdout)
    assert "no tests/ file opened" in run.stdout


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel(tmp_path):
    """Builds the wheel, installs it with its dependencies (from the package index) into a fresh
    venv, and runs `python -m keras_clip.demo` there, outside the repository (about a minute
    and a half with a warm index; 1.5 GB of venv, removed afterwards)."""
    wheels, venv = tmp_path / "wheel", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True, timeout=600)
    (wheel,) = wheels.glob("keras_clip_dalle-*.whl")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
        python = str(venv / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=1800)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
        run = subprocess.run([python, "-m", "keras_clip.demo"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        _check_demo_output(run.stdout)
        assert "cuInit" not in run.stderr and "oneDNN" not in run.stderr, run.stderr
        skimage = subprocess.run([python, "-c", "import skimage"], capture_output=True)
        assert skimage.returncode != 0  # not a dependency of the package
    finally:
        shutil.rmtree(venv, ignore_errors=True)
