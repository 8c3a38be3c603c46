"""Per-weight attribution (fidelity.attribute) with whole-model runs against runs of each weight's cone: same
errors, bit for bit, and the time of each (issue #16, branch backoff6).

    nice -n 10 python bench/attribution_cones.py MODEL.onnx [COMPRESSED.onnx]

Without COMPRESSED, MODEL is first compressed with the defaults into a temporary folder. The feed is what compress
measures the gains on: fidelity.prepare's first feed (synthesised inputs), its first ATTRIBUTION_SAMPLES samples.
Prints, per variant, wall and CPU seconds (this process: the runs use every core) and whether every weight's error
is the same float.
"""

import os
import sys
import tempfile
import time

import numpy as np

from onnxcomp.passes import model_io
from onnxcomp.pipeline import compression, fidelity


def main() -> None:
    source = sys.argv[1]
    with tempfile.TemporaryDirectory() as folder:
        compressed = sys.argv[2] if len(sys.argv) > 2 else os.path.join(folder, "out.onnx")
        if len(sys.argv) <= 2:
            compression.compress(source, compressed)
        original = model_io.load_model(source, external_data=False)
        feeds, _, unavailable = fidelity.prepare(source, model=original)
        if unavailable or not feeds:
            print(f"{os.path.basename(os.path.dirname(source))}: no feed ({unavailable})")
            return
        count = next((len(v) for v in feeds[0].values() if np.ndim(v)), 0)
        feed = {k: (v[:compression.ATTRIBUTION_SAMPLES] if np.ndim(v) and len(v) == count else v) for k, v in feeds[0].items()}
        found = {}
        for cones in (False, True, False, True):
            start, cpu = time.perf_counter(), time.process_time()
            errors = fidelity.attribute(source, compressed, feed, original, cones=cones)
            print(f"cones={cones}: {len(errors)} weights, {time.perf_counter() - start:.2f} s wall, "
                  f"{time.process_time() - cpu:.2f} s CPU", flush=True)
            found.setdefault(cones, []).append(errors)
        same = all(found[True][0][n] == found[False][0][n] for n in found[False][0])
        repeat = found[True][0] == found[True][1] and found[False][0] == found[False][1]
        differ = {n: (found[False][0][n], found[True][0][n]) for n in found[False][0] if found[False][0][n] != found[True][0][n]}
        print(f"{source}: same errors bit for bit: {same}; each variant repeats itself: {repeat}; differing: {differ}")


if __name__ == "__main__":
    main()
