#!/usr/bin/env bash
# mpqat setup: installs every Debian package the build, tests and benchmarks need,
# then configures and builds a Release tree in build/. Idempotent and non-interactive.
#   MPQAT_SKIP_APT=1   skip the package step (e.g. no root)
#   MPQAT_BUILD_DIR    build folder (default: build)
#   MPQAT_JOBS         parallel compile jobs (default: nproc)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

pkgs=(
  build-essential cmake pkg-config ccache git
  libtorch-dev libgloo-dev libopenblas0-openmp liblapack-dev
  libeigen3-dev libgtest-dev libgmock-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  libspdlog-dev libfmt-dev
  sentencepiece libbz2-dev python3 bible-kjv-text bible-kjv
)

if [ "${MPQAT_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "[setup] all packages present"
  fi
fi

# llama.cpp, prebuilt from the npm registry, for the GGUF export tests (tests/test_gguf.cpp skips
# them where it is absent). Only the linux-x64 CPU package: the other platforms' optional ones are
# left out. A failed install leaves the build alone and says so.
if [ "${MPQAT_SKIP_LLAMACPP:-0}" != 1 ] && command -v npm >/dev/null; then
  if [ ! -d tools/llamacpp/node_modules/@fugood/node-llama-linux-x64 ]; then
    (cd tools/llamacpp && npm install --omit=optional --no-audit --no-fund --no-save --ignore-scripts >/dev/null 2>&1) \
      && echo "[setup] llama.cpp (npm @fugood/llama.node) installed in tools/llamacpp/node_modules" \
      || echo "[setup] warning: npm install of llama.cpp failed: the GGUF/llama.cpp tests will skip"
  fi
fi

build=${MPQAT_BUILD_DIR:-build}
jobs=${MPQAT_JOBS:-$(nproc)}
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}"
cmake --build "$build" -j "$jobs"
echo "[setup] built $build/mpqat"
