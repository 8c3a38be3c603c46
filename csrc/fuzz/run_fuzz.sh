#!/usr/bin/env bash
# Build fuzz_decode (clang, libFuzzer + AddressSanitizer + UBSan), write the seed corpus with the Python
# encoder, and fuzz the record decoder.
#
#   csrc/fuzz/run_fuzz.sh [SECONDS] [extra libFuzzer flags...]     (default 20 s: the CI smoke)
#
# Environment: PYTHON (with onnxcomp's dependencies; default python3), BUILD_DIR (default
# build/fuzz in the checkout), CORPUS_DIR (default: a fresh temporary folder), JOBS (default 1).
# Without clang++ or libFuzzer it says so and exits 0: the fuzz run is optional where clang is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SECONDS_TO_RUN="${1:-20}"
shift || true
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/fuzz}"  # per checkout: a shared folder would mix CMake caches

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: skipped (clang++ not found; on Debian/Ubuntu: apt-get install clang)"
  exit 0
fi
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
    | clang++ -x c++ -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1; then
  echo "fuzz: skipped (clang++ has no libFuzzer runtime; install the compiler-rt package of your clang)"
  exit 0
fi

cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release -DONNXCOMP_BUILD_FUZZ=ON >/dev/null
cmake --build "$BUILD_DIR" --target fuzz_decode -j2 >/dev/null

if [ -z "${CORPUS_DIR:-}" ]; then
  CORPUS_DIR="$(mktemp -d /tmp/onnxcomp-fuzz-corpus.XXXXXX)"
  TEMPORARY_CORPUS=1
fi
"$PYTHON" "$ROOT/csrc/fuzz/make_corpus.py" "$CORPUS_DIR"
# The seeds stay read-only: new inputs go to a separate folder (listed first, so libFuzzer writes there).
FOUND_DIR="$(mktemp -d /tmp/onnxcomp-fuzz-found.XXXXXX)"
ARTIFACTS="$(mktemp -d /tmp/onnxcomp-fuzz-artifacts.XXXXXX)"
echo "fuzz: $BUILD_DIR/fuzz_decode -max_total_time=$SECONDS_TO_RUN -max_len=131072 -timeout=10 -rss_limit_mb=2048 $* $FOUND_DIR $CORPUS_DIR"
"$BUILD_DIR/fuzz_decode" -max_total_time="$SECONDS_TO_RUN" -max_len=131072 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "$@" "$FOUND_DIR" "$CORPUS_DIR"
# Reached only without a finding (set -e): keep nothing behind; a crash leaves its input in $ARTIFACTS.
rm -rf "$FOUND_DIR" "$ARTIFACTS"
[ -n "${TEMPORARY_CORPUS:-}" ] && rm -rf "$CORPUS_DIR"
echo "fuzz: no finding"
