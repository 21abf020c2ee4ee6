"""Runs tests/test_beam.py (the embedding job on Apache Beam equals the local job) in the Beam
venv that `make test-slow` builds (.venv-beam: apache-beam 2.77 cannot share this venv, see the
Makefile), so that `make test-slow` checks it with the rest. Under CI a missing Beam venv fails."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM_PYTHON = os.path.join(ROOT, os.environ.get("BEAM_VENV", ".venv-beam"), "bin", "python")


@pytest.mark.slow
def test_beam_job_equals_the_local_job_in_the_beam_venv():
    if not os.path.exists(BEAM_PYTHON):
        message = f"no Beam venv at {BEAM_PYTHON}: `make test-beam` builds it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([BEAM_PYTHON, "-m", "pytest", "-q", "-m", "slow", "-p",
                             "no:cacheprovider", "tests/test_beam.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail
