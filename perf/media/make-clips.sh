#!/usr/bin/env bash
# Encodes the VP8 clips the load generator publishes (one per simulcast layer of the scenarios):
# 4 s of ffmpeg's moving test pattern, libvpx in real-time mode as a browser encodes, one key
# frame at the start (the generator jumps back to it when a PLI asks for a key frame) and the
# layer's bitrate and frame rate. The clips are committed; this script says how they were made.
set -euo pipefail
cd "$(dirname "$0")"
clip() { # name width height fps kbps
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=$2x$3:rate=$4" -t 4 \
    -c:v libvpx -deadline realtime -cpu-used 8 -b:v "$5k" -minrate "$5k" -maxrate "$5k" \
    -g 1000 -auto-alt-ref 0 -lag-in-frames 0 -error-resilient 1 -f ivf "$1.ivf"
}
clip q 320 180 15 160
clip h 640 360 20 450
clip f 1280 720 30 1700
ls -l ./*.ivf
