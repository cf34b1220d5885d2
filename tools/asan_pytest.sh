#!/usr/bin/env bash
# Run the native-heavy Python tests against an AddressSanitizer + UBSan build of dsv4._native.
#
#   tools/asan_pytest.sh                     # default test list (see TESTS below)
#   tools/asan_pytest.sh tests/test_quant.py # any pytest arguments instead
#
# Env: BUILD_DIR (default /tmp/build-asan-py), JOBS (default 2), PYTHON (default python).
# Builds a private Debug + -fsanitize=address,undefined _native in BUILD_DIR (never touches the
# editable install's build/), assembles a throw-away `dsv4` package tree (pybindings/dsv4 files,
# convert -> dsv4.convert, quant -> dsv4.quant, the sanitized _native*.so) and runs pytest with
# libasan/libubsan preloaded (python itself is not instrumented). Any sanitizer finding aborts the
# run (-fno-sanitize-recover=all) with a report on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-/tmp/build-asan-py}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python}"
TESTS=(tests/test_engine.py tests/test_model_loader.py tests/test_gguf_reader.py tests/test_quant.py
       tests/test_model_api.py tests/test_engine_layouts.py tests/test_bench_cli.py)
if [ "$#" -gt 0 ]; then TESTS=("$@"); fi

# 1. The sanitized module.
cmake -S "$ROOT" -B "$BUILD_DIR" -DDSV4_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
      -DDSV4_BUILD_PYTHON=ON -DDSV4_BUILD_TESTS=OFF \
      -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target _native
SO="$(ls "$BUILD_DIR"/_native*.so | head -n1)"

# 2. A package tree that imports the sources plus the sanitized module.
TREE="$(mktemp -d /tmp/dsv4-asan-tree.XXXXXX)"
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/dsv4"
for f in "$ROOT"/pybindings/dsv4/*; do
    case "$(basename "$f")" in _native*.so|__pycache__) continue ;; esac
    ln -s "$f" "$TREE/dsv4/$(basename "$f")"
done
ln -s "$ROOT/convert" "$TREE/dsv4/convert"
ln -s "$ROOT/quant" "$TREE/dsv4/quant"
ln -s "$SO" "$TREE/dsv4/$(basename "$SO")"
# A scikit-build-core editable install puts a meta-path finder in front of PYTHONPATH that would
# map dsv4._native to the regular (unsanitized) build; drop it for this interpreter only.
cat > "$TREE/sitecustomize.py" <<'EOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
EOF

export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# Leak checking off: CPython and numpy "leak" by design at exit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

cd "$ROOT"
loaded="$("$PYTHON" -c 'import dsv4._native as n; print(n.__file__)')"
echo "dsv4._native: $loaded"
case "$(readlink -f "$loaded")" in
    "$(readlink -f "$SO")") ;;
    *) echo "error: not the sanitized module ($SO)" >&2; exit 1 ;;
esac
"$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
