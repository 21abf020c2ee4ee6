"""The commands keep TensorFlow's start-up noise quiet unless asked (keras_clip/cli.py)."""

import ast
import contextlib
import importlib
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

from keras_clip import cli
from keras_clip.cli import COMMANDS, command_module, startup_noise_filter

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOISE = ("cuInit", "cpu_feature_guard", "oneDNN", "absl::InitializeLog")

# What TensorFlow 2.21 prints on a CPU-only machine with TF_CPP_MIN_LOG_LEVEL=2 (abridged).
_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796048029.995086    8639 port.cc:153] oneDNN custom operations are on. You may see ...
I0000 00:00:1796048029.995361    8639 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796048030.041215    8639 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow ...
W0000 00:00:1796048030.041215    8639 some_module.cc:1] a warning
E0000 00:00:1796048032.107863    8639 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
E0000 00:00:1796048032.107863    8639 other.cc:7] a real error
/some/file.py:3: UserWarning: a Python warning
  warnings.warn(...)
"""


def test_startup_filter_drops_what_the_level_hides_and_the_driverless_cuinit():
    kept = startup_noise_filter(_STARTUP, 2)
    assert kept == ("E0000 00:00:1796048032.107863    8639 other.cc:7] a real error\n"
                    "/some/file.py:3: UserWarning: a Python warning\n  warnings.warn(...)\n")
    assert "W0000" in startup_noise_filter(_STARTUP, 1)
    assert startup_noise_filter(_STARTUP, 0) == _STARTUP
    # With a CUDA driver present a failing cuInit is a real problem: kept.
    with_driver = _STARTUP.replace("Could not find cuda drivers", "Found cuda drivers")
    assert "failed call to cuInit" in startup_noise_filter(with_driver, 2)


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "keras_clip.train", "--tf-logs"], ("keras_clip.train", ["--tf-logs"])),
    (["python", "-u", "-X", "dev", "-mexport.serve", "--port", "0"], ("export.serve", ["--port", "0"])),
    (["python", "-m", "pytest", "tests"], ("pytest", ["tests"])),
    (["python", "script.py", "-m", "keras_clip.train"], (None, [])),
    (["python", "-c", "import keras_clip", "-m", "x"], (None, [])),
    (["python"], (None, [])),
    # Combined single-letter options: -m ends the group, its module is the rest or the next arg.
    (["python", "-Im", "keras_clip.convert", "a.pt"], ("keras_clip.convert", ["a.pt"])),
    (["python", "-Bmkeras_clip.train", "--epochs", "1"], ("keras_clip.train", ["--epochs", "1"])),
    (["python", "-uEsm", "export.serve"], ("export.serve", [])),
    (["python", "-Wignore", "-Xdev", "-Im", "export.serve"], ("export.serve", [])),
    (["python", "-I", "-W", "ignore", "-m", "export.serve"], ("export.serve", [])),
    (["python", "-Wm", "script.py"], (None, [])),   # -W takes the rest of the group: "m"
    (["python", "-Ic", "import x", "-m", "export.serve"], (None, [])),
    (["python", "--check-hash-based-pycs", "always", "-m", "export.serve"], ("export.serve", [])),
    (["python", "-Im"], (None, [])),
])
def test_command_line_parsing(argv, expected):
    assert command_module(argv) == expected


def _modules_with_a_main():
    found = set()
    for package in ("keras_clip", "keras_dalle", "export"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                   for node in tree.body):
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_command_is_listed_and_takes_the_flag():
    assert set(COMMANDS) == _modules_with_a_main()
    for name in COMMANDS:
        module = importlib.import_module(name)
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as out:
            module.main(["--tf-logs", "--help"])
        assert exit_info.value.code == 0 and "--tf-logs" in out.getvalue(), name


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_commands_start_quietly_unless_asked(tmp_path):
    # TensorFlow is imported (by the package) before argparse runs, so `--help` shows the start-up.
    runs = {
        "clip quiet": ([sys.executable, "-m", "keras_clip.convert", "--help"], _env()),
        "dalle quiet": ([sys.executable, "-m", "keras_dalle.sampling.generate", "--help"], _env()),
        "clip --tf-logs": ([sys.executable, "-m", "keras_clip.convert", "--tf-logs", "--help"], _env()),
        "dalle level 0": ([sys.executable, "-m", "keras_dalle.sampling.generate", "--help"],
                          _env(TF_CPP_MIN_LOG_LEVEL="0")),
    }
    procs = {name: subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, env) in runs.items()}
    out = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, out[name][1][-2000:])
    for name in ("clip quiet", "dalle quiet"):
        assert "usage:" in out[name][0]
        assert not [n for n in NOISE if n in out[name][1]], (name, out[name][1])
    for name in ("clip --tf-logs", "dalle level 0"):
        assert [n for n in NOISE if n in out[name][1]], (name, out[name][1])


def test_combined_flags_and_a_non_integer_level_start_quietly(tmp_path):
    runs = {
        "-Im": ([sys.executable, "-Im", "keras_clip.convert", "--help"], _env()),
        "level abc": ([sys.executable, "-m", "keras_clip.convert", "--help"],
                      _env(TF_CPP_MIN_LOG_LEVEL="abc")),
    }
    procs = {name: subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, env) in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in out, (name, err[-2000:])
        assert not [n for n in NOISE if n in err], (name, err)


@pytest.mark.parametrize("argv, level", [
    (["python", "-c", "import keras_clip"], None),   # a program importing the package
    (["python", "-m", "pytest", "tests"], None),
    (["python", "-m", "keras_clip.train", "--tf-logs"], "0"),
    (["python", "-m", "export.serve", "--port", "0"], "3"),
    (["python", "-Im", "export.serve"], "3"),
])
def test_only_command_runs_touch_tensorflow_logging(argv, level, monkeypatch):
    monkeypatch.setattr(cli, "_done", False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow_startup(argv)  # (TensorFlow is already imported here: no capture)
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == level


@pytest.mark.parametrize("user_level, level", [("abc", "3"), ("", "3"), ("1", "1"), ("0", "0")])
def test_a_non_integer_user_level_counts_as_unset(user_level, level, monkeypatch):
    # TensorFlow reads a non-integer TF_CPP_MIN_LOG_LEVEL as 0 (show everything).
    monkeypatch.setattr(cli, "_done", False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level)
    cli.quiet_tensorflow_startup(["python", "-m", "keras_clip.train"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level


def _help(module):
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as out:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("module", ["keras_clip.convert", "keras_clip.demo", "keras_clip.train"])
def test_usage_names_the_module_not_the_file(module):
    assert _help(module).startswith(f"usage: python -m {module} ")


def test_train_help_keeps_the_example_lines_and_hides_the_test_hook():
    from keras_clip import callbacks, train

    text = _help("keras_clip.train")
    assert "--batch-size 128 \\\n        --logdir runs/clip" in text  # was joined into one line
    assert callbacks.KILL_AT_STEP_ENV not in text and "Test hook" not in text
    assert callbacks.KILL_AT_STEP_ENV in train.__doc__  # still documented for developers


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer (>= 1), got 0"),
    (["--epochs", "-1"], "argument --epochs: expected a positive integer (>= 1), got -1"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer (>= 1), got 0"),
    (["--steps-per-epoch", "0"], "argument --steps-per-epoch: expected a positive integer"),
    (["--save-freq", "0"], "argument --save-freq: expected a positive integer"),
    (["--epochs", "two"], "argument --epochs: expected a positive integer, got 'two'"),
    (["--eval-examples", "-1"], "argument --eval-examples: expected an integer >= 0, got -1"),
])
def test_train_rejects_counts_that_are_not_positive(argv, message, capsys, tmp_path):
    from keras_clip import train

    with pytest.raises(SystemExit) as exit_info:  # (a tmp logdir in case it trains after all)
        train.main(argv + ["--logdir", str(tmp_path), "--verbose", "0"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_refuses_the_removed_grad_accum_pointing_to_accum_freq(capsys, tmp_path):
    # Was: "unrecognized arguments: --grad-accum 4" and nothing about its replacement.
    from keras_clip import train

    for argv in (["--grad-accum", "4"], ["--grad-accum"]):
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv + ["--logdir", str(tmp_path), "--verbose", "0"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: --grad-accum was removed: use --accum-freq K" in err
        assert "each saw only its own micro-batch's negatives" in err
    assert "--grad-accum" not in _help("keras_clip.train")  # hidden from --help
    assert not os.listdir(tmp_path)  # refused before anything ran


def _option_help(text):
    """``{option: its help text on one line}`` of an argparse --help output."""
    return {block.split()[0]: " ".join(block.split())
            for block in re.split(r"\n  (?=--)", text)[1:]}


def test_train_help_shows_the_defaults():
    options = _option_help(_help("keras_clip.train"))
    for option, default in (("--logdir", "runs/clip"), ("--epochs", 10), ("--batch-size", 128),
                            ("--lr", 0.0005), ("--weight-decay", 0.2), ("--save-freq", 50),
                            ("--eval-examples", 1000), ("--seed", 0), ("--accum-freq", 1),
                            ("--data", "shapes"), ("--split", "train")):
        assert f"(default: {default})" in options[option], options[option]
    # Options whose help already says their default, or whose default is None / False, get no
    # second "(default: …)".
    for option in ("--preset", "--loss", "--xla-towers", "--output", "--lock-image"):
        assert "(default: None)" not in options[option] and options[option].count("default") <= 1


def test_float_in_names_the_interval_and_refuses_nan():
    import argparse

    top_p = cli.float_in(0.0, 1.0, low_open=True)
    assert top_p("1") == 1.0 and top_p("0.25") == 0.25
    for text, message in (("0", "expected a number in (0, 1], got 0"),
                          ("nan", "expected a number in (0, 1], got nan"),
                          ("x", "expected a number in (0, 1], got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            top_p(text)
    assert cli.float_in(0.0)("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 0, got -1"):
        cli.float_in(0.0)("-1")
