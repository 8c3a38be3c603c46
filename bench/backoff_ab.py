"""Compress time with and without the targeted back-off rounds, in one environment (issue #16 guard for branch ratio5).

    nice -n 10 python bench/backoff_ab.py MODEL.onnx ROUNDS

Runs ``onnxcomp.compress(MODEL, tmp/m.onnx)`` (the defaults) with compression.TARGETED_ROUNDS set to ROUNDS (0: the
back-off halves every weight's budget, as before the targeted rounds) and prints wall and CPU seconds (user +
system of this process), the output bytes and the back-off rounds. One process per setting: run it once with 0
and once with 2, one after the other.
"""

import os
import resource
import sys
import tempfile
import time

from onnxcomp.pipeline import compression

rounds = int(sys.argv[2])
compression.TARGETED_ROUNDS = rounds
with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    report = compression.compress(sys.argv[1], os.path.join(out, "m.onnx"))
    wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"TARGETED_ROUNDS={rounds}: wall {wall:.1f} s, CPU {usage.ru_utime + usage.ru_stime:.1f} s, "
      f"{report.output_bytes:,} bytes, ratio {report.ratio:.3f}, back-off "
      f"{[(h['budget'], h['passed'], len(h['tightened'])) for h in report.backoff]}")
