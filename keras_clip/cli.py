"""The project's commands (``python -m keras_clip.train`` …) keep TensorFlow's start-up noise off
the terminal unless asked for it.

On every start TensorFlow prints lines that say nothing about the run: INFO and WARNING logs
(``cpu_feature_guard`` …), oneDNN's notice and "Could not find cuda drivers" — those two while its
libraries load, before it reads ``TF_CPP_MIN_LOG_LEVEL``, so that variable cannot hide them — and,
on a machine without a GPU driver, the ERROR "failed call to cuInit".

For a command run, `quiet_tensorflow_startup` (called by ``keras_clip/__init__.py`` before
anything imports TensorFlow; ``keras_dalle`` and ``export`` import keras_clip first):

* with ``--tf-logs`` on the command line, sets ``TF_CPP_MIN_LOG_LEVEL=0`` (every log, in child
  processes too) and changes nothing else;
* otherwise sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user has set it to an integer (a value that
  is not one, e.g. ``abc``, counts as unset and is replaced; TensorFlow would read it as 0 and
  show everything): TensorFlow drops its C++ INFO, WARNING and ERROR logs for the whole run. The
  ERROR lines a run prints without failing are notices too (e.g. "oneDNN supports DT_INT64 only on
  platforms with AVX-512"); a real error reaches Python as an exception carrying the message;
  ``--tf-logs`` shows them all. Then it imports TensorFlow and lists its devices with the
  process's stderr (file descriptor 2) captured, and writes back every captured line except the
  ones the level in force would hide had TensorFlow applied it (the ``I…`` lines printed before it
  read the variable, with absl's "All log messages before absl::InitializeLog()" banner) and, at a
  user-set level below 3, the cuInit error when TensorFlow has just said it found no CUDA driver
  (with a driver present, a failing cuInit is a real problem and is kept). A user-set
  ``TF_CPP_MIN_LOG_LEVEL=0`` keeps everything, as ``--tf-logs`` does.

A command run is recognised from ``sys.orig_argv`` (Python ≥ 3.10): the interpreter's own command
line, set before any import, names the ``-m`` module (also in combined options such as ``-Im``),
and only the modules in `COMMANDS` count.
A program that imports keras_clip — or ``python -m pytest`` — is left alone: its TensorFlow
logging stays as it set it. Each command's parser lists the flag (`add_tf_logs_flag`), so
``--help`` shows it and argparse accepts it.
"""

import argparse
import contextlib
import os
import re
import sys
import tempfile

__all__ = ["COMMANDS", "TF_LOGS_FLAG", "DefaultsHelpFormatter",
           "RawDescriptionDefaultsHelpFormatter", "add_tf_logs_flag", "command_module",
           "float_in", "int_at_least", "non_negative_int", "positive_int",
           "quiet_tensorflow_startup", "startup_noise_filter"]

# Every module of keras_clip, keras_dalle and export that runs as `python -m …`
# (tests/test_cli.py checks this list against the modules' `if __name__ == "__main__"`).
COMMANDS = (
    "keras_clip.convert", "keras_clip.demo", "keras_clip.embed", "keras_clip.evaluate",
    "keras_clip.beam", "keras_clip.search_demo", "keras_clip.train", "keras_clip.wise_ft",
    "keras_dalle.fidelity", "keras_dalle.sampling.fidelity", "keras_dalle.sampling.generate",
    "keras_dalle.transformer.train", "keras_dalle.vae.train",
    "export.client", "export.dalle_saved_model", "export.demo_serve", "export.dvae_saved_model",
    "export.saved_model", "export.serve", "export.serving_config", "export.tflite",
)
TF_LOGS_FLAG = "--tf-logs"

_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^\]\s]+\] ")  # absl/glog prefix
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT = "failed call to cuInit"
_CONTINUATION = "To enable the following instructions:"  # second line of cpu_feature_guard's INFO
_done = False


def command_module(orig_argv=None):
    """``(module, arguments)`` of a ``python [options] -m module arguments…`` command line
    (default ``sys.orig_argv``), or ``(None, [])`` for a script, ``-c`` or an interactive run.

    Single-letter options may be combined as Python allows: ``-Im module``, ``-Bmmodule``,
    ``-u -Wignore -m module``; in a group, ``-W`` / ``-X`` take the rest of the group (or the next
    argument) as their value, ``-c`` ends the search and ``-m`` takes the rest of the group (or
    the next argument) as the module."""
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)[1:]
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-", "--") or not arg.startswith("-"):
            break  # stdin or a script
        if arg.startswith("--"):  # the long options; one takes a value
            if arg == "--check-hash-based-pycs":
                i += 1
            continue
        for j, letter in enumerate(arg[1:], start=2):
            if letter == "c":
                return None, []
            if letter in "mWX":
                value = arg[j:]
                if not value:  # the value is the next argument
                    if i >= len(argv):
                        return None, []
                    value, i = argv[i], i + 1
                if letter == "m":
                    return value, argv[i:]
                break
    return None, []


def startup_noise_filter(text, level):
    """``text`` (TensorFlow's start-up output on stderr) without the lines that
    ``TF_CPP_MIN_LOG_LEVEL=level`` should have hidden, and without the cuInit error when
    TensorFlow also said it found no CUDA driver."""
    if level < 1:
        return text
    no_driver = _NO_DRIVER in text
    kept, dropped_previous = [], False
    for line in text.splitlines(keepends=True):
        match = _LOG_LINE.match(line)
        if match:
            drop = _LEVELS[match.group(1)] < level or (no_driver and _CUINIT in line)
        else:
            drop = line.rstrip("\n") == _ABSL_BANNER or (
                dropped_previous and line.startswith(_CONTINUATION))
        dropped_previous = drop
        if not drop:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr(level):
    """Captures file descriptor 2 (C++ and Python output alike) and writes back what
    `startup_noise_filter` keeps, also when the body raises."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = startup_noise_filter(capture.read().decode("utf-8", "replace"), level)
            if kept:
                os.write(2, kept.encode("utf-8"))


def _user_level():
    """``TF_CPP_MIN_LOG_LEVEL`` as an int, or None when unset or not an integer."""
    try:
        return int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except (KeyError, ValueError):
        return None


def quiet_tensorflow_startup(orig_argv=None):
    """For a run of one of `COMMANDS`: imports TensorFlow with its start-up noise filtered out
    (see the module docstring). Does nothing in any other process, and only once."""
    global _done
    if _done:
        return
    _done = True
    module, arguments = command_module(orig_argv)
    if module not in COMMANDS:
        return
    if TF_LOGS_FLAG in arguments:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    level = _user_level()
    if level is None:  # unset or not an integer (TensorFlow would read that as 0: show all)
        level = 3
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if level < 1 or "tensorflow" in sys.modules:
        return
    with _filtered_stderr(level):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the GPU probe (and its cuInit error) happens here


def add_tf_logs_flag(parser):
    """Adds ``--tf-logs`` to a command's argparse parser (read at start-up, before argparse)."""
    parser.add_argument(TF_LOGS_FLAG, action="store_true",
                        help="show TensorFlow's C++ logs (start-up notices, INFO, WARNING and "
                             "ERROR lines; hidden by default, as with TF_CPP_MIN_LOG_LEVEL=3); "
                             "TF_CPP_MIN_LOG_LEVEL=0 also shows them")
    return parser


def int_at_least(minimum):
    """An argparse ``type=`` for integer options >= ``minimum``; the error names the value."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            shown = f"{wanted} (>= 1)" if minimum == 1 else wanted
            raise argparse.ArgumentTypeError(f"expected {shown}, got {value}")
        return value

    parse.__name__ = "positive_int" if minimum == 1 else f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)  # counts that must be >= 1
non_negative_int = int_at_least(0)  # counts where 0 means "off"


def float_in(low=None, high=None, low_open=False, high_open=False):
    """An argparse ``type=`` for a float in an interval (None: unbounded on that side;
    ``low_open`` / ``high_open`` exclude the bound); NaN is refused. The error names the
    interval and the value, e.g. "expected a number in (0, 1], got 1.5"."""
    if high is None:
        wanted = "a number" if low is None else f"a number {'>' if low_open else '>='} {low:g}"
    else:
        left = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        wanted = f"a number in {left}, {high:g}{')' if high_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: …)" to an option's help text unless the text already mentions a default
    or the default is None / False (nothing to show). Options without help text get no line of
    their own from argparse, so give every option whose default matters a help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and text and "default" not in text.lower()
                and not any(action.default is x for x in (None, False, argparse.SUPPRESS))):
            shown = action.default
            if isinstance(shown, (list, tuple)):
                text += " (default: " + " ".join(str(x) for x in shown).replace("%", "%%") + ")"
            else:
                text += " (default: %(default)s)"
        return text


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter,
                                          DefaultsHelpFormatter):
    """`DefaultsHelpFormatter` that keeps the description's line breaks (its examples)."""
