"""bench/memory.py end to end at a tiny size: every trial runs in one reused Ray worker and is measured.
No assertion on the figures (a shared CI machine; bench/README.md records them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_bench import BENCH, bench_env


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_memory_bench_reuses_one_worker():
    proc = subprocess.run([sys.executable, str(BENCH / "memory.py"), "--trials", "4", "--epochs", "1", "--width", "2",
                           "--json"], capture_output=True, text=True, timeout=380, cwd=BENCH.parent,
                          env=bench_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "memory" and out["one_worker"] and out["finished"] == out["trials"] == 4
    assert [r["trial"] for r in out["rows"]] == [1, 2, 3, 4] and all(r["rss_mib"] > 0 for r in out["rows"])
    assert out["rss_after_3_mib"] == out["rows"][2]["rss_mib"]
    assert not Path(out["scratch_dir"]).exists()  # removed after a run that succeeded
