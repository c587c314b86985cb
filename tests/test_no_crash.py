"""No input, however malformed, may crash the process (API.md): thousands of random calls
(fuzz_calls.py) in a child process per kernel family, which must exit 0 having raised
nothing but ValueError and TypeError, and having run every op to a result many times."""
import os
import subprocess
import sys

import pytest

from fn_testutil import TEST_SEED

_FUZZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_calls.py")


@pytest.mark.parametrize("part", range(2))
def test_random_calls_raise_value_or_type_errors_only(part, isa):
    seed = TEST_SEED * 10 + part
    proc = subprocess.run([sys.executable, _FUZZER, str(seed), "3000", isa],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"fuzz_calls.py {seed} 3000 {isa} exited "
                                  f"{proc.returncode}: {proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("done"), proc.stdout[-2000:]
    assert lines[:-1] == [], "\n".join(lines[:20])
    returned = dict(item.split("=") for item in lines[-1].split()[1:])
    # each op ran to a result, not only into its argument checks
    assert all(int(n) >= 5 for n in returned.values()), returned
