"""docs/porting.md's worked example runs and prints what the page shows."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import fastnorm

# Skipped without torch, except where FASTNORM_REQUIRE_TORCH=1 (CI) makes a missing torch
# an error, so the comparison with torch cannot silently drop out.
if os.environ.get("FASTNORM_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401 - imported to fail loudly when missing
else:
    torch = pytest.importorskip("torch")

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "porting.md"


def test_porting_example_prints_what_the_page_shows(tmp_path):
    text = PAGE.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"\nOutput[^\n]*\n(?:[^\n]+\n)*\n```\n(.*?)```", text, re.S).group(1)
    # run in an empty directory, importing the fastnorm this suite tests (installed or built
    # in place)
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(fastnorm.__file__).parent.parent))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed, expected = run.stdout.splitlines(), shown.splitlines()
    assert len(printed) == len(expected)
    for got, want in zip(printed, expected):
        if want.startswith("max |fastnorm - torch|:"):  # rounding differs by kernel family
            assert float(got.split(":")[1]) < 1e-6, got
        else:
            assert got == want
