#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine (run as root), idempotently:
# system packages (mosquitto broker, ffmpeg, libsystemd headers, GStreamer RTSP server for the stream
# tests; for dev also chromium, postgresql and aravis), then a virtual environment in .venv with edged, the training tools and the test tools
# (devkit/, the test and demo helpers, is used from the checkout and never installed).
# Usage: scripts/setup.sh [runtime|train|dev]   (default dev = everything)
set -euo pipefail
cd "$(dirname "$0")/.."
level="${1:-dev}"

apt_packages=(mosquitto ffmpeg libsystemd-dev pkg-config gcc python3-venv python3-dev systemd
              python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
              gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav)
if [ "$level" = dev ]; then
  # the tests' real components: headless browser, PostgreSQL server, Aravis and its fake GenICam cameras
  apt_packages+=(chromium chromium-driver fonts-dejavu-core postgresql libaravis-0.8-0 gir1.2-aravis-0.8
                 aravis-tools libgirepository1.0-dev libcairo2-dev)
fi
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
case "$level" in
  runtime) extras="systemd" ;;
  train)   extras="systemd,train" ;;
  *)       extras="systemd,train,dev,genicam,opcua,collect,openvino" ;;
esac
stamp=".venv/.edged-installed-$level-$(cat pyproject.toml setup.py | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing edged[$extras] into .venv (first run takes a few minutes)"
  python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
