#!/usr/bin/env bash
# Installs a built onnxcomp wheel as a user without a compiler would, and checks that it works (docs/release.md):
# a fresh venv; pip may install wheels only (--only-binary :all:, so nothing can be compiled, and no onnxruntime
# headers are looked for); then, with PATH holding only that venv (no gcc, c++, cmake reachable) and from a folder
# outside the checkout, release/check_installed.py compresses a bundled model with the `onnxcomp` command and
# runs it in an onnxruntime session.
# Usage: release/check_wheel.sh dist/onnxcomp-*.whl
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
env -u ORT_INCLUDE_DIR CC=false CXX=false "$work/venv/bin/pip" install -q --only-binary=:all: "$wheel"
mkdir "$work/scratch"
keep=(HOME="$HOME" PATH="$work/venv/bin" LANG=C.UTF-8)
for name in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do  # set on some machines for OpenBLAS's sake (env README)
  if [ -n "${!name:-}" ]; then keep+=("$name=${!name}"); fi
done
(cd "$work/scratch" && env -i "${keep[@]}" "$work/venv/bin/python" "$root/release/check_installed.py" "$root/models")
