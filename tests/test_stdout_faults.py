"""Standard output on a full disk or past a file-size limit is one line, like every other writer."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "landscape.jpg"


def _run(args, stdout, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "artcap", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, preexec_fn=preexec_fn, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json", "csv"])
def test_stdout_to_a_full_disk_is_one_line(fmt):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        result = _run(["caption", str(EXAMPLE), "--model", "fast", "--format", fmt, "-q"], full)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "standard output" in result.stderr and "space" in result.stderr


@pytest.mark.slow
def test_stdout_past_a_file_size_limit_is_one_line(tmp_path):
    def limit():  # in the child only: 10 bytes of output, and SIGXFSZ ignored so the write fails with EFBIG
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))

    with open(tmp_path / "out.txt", "w") as out:
        result = _run(["caption", str(EXAMPLE), str(EXAMPLE), "--model", "fast", "-q"], out, preexec_fn=limit)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "standard output" in result.stderr
