#!/usr/bin/env bash
# Install, update or uninstall edged as a systemd service. Safe to run again: a second run with the
# same sources changes nothing, and a technician's /etc/edged/edged.yaml is never overwritten.
#
#   sudo deploy/install.sh                      install or update from this checkout, enable and (re)start
#   sudo deploy/install.sh --bundle DIR         also copy a model bundle and make it models/current
#   sudo deploy/install.sh --jetson --wheel onnxruntime_gpu-*.whl     Jetson: see deploy/README.md
#   sudo deploy/install.sh --with-genicam       also GenICam cameras (GigE Vision, USB3 Vision) through Aravis
#   sudo deploy/install.sh --uninstall          remove program and unit; keep /etc/edged and /var/lib/edged
#   sudo deploy/install.sh --uninstall --purge  also delete config, data (database, images, bundles), user
#   deploy/install.sh --root /tmp/stage --no-venv   staging: write the tree under /tmp/stage only
#
# Layout:  /opt/edged/venv               Python venv with the runtime only (no torch, no training tools)
#          /opt/edged/share/             README.md, edged.yaml.example (the shipped default config)
#          /usr/local/bin/edged          -> /opt/edged/venv/bin/edged (so `edged status` works)
#          /etc/edged/edged.yaml         the config (0640 root:edged), kept across updates
#          /etc/edged/mqtt-password      MQTT password (0600 root), passed with LoadCredential=
#          /etc/edged/web-password       web view login password (0600 root), LoadCredential=
#          /etc/edged/opcua-password     OPC UA user's password (0600 root), LoadCredential=
#          /etc/systemd/system/edged.service
#          /var/lib/edged/               database, health file, images; models/<bundle_id>, models/current
#
# Options:
#   --bundle DIR          copy a model bundle to /var/lib/edged/models/<bundle_id>, point `current` at it
#   --no-start            install and enable, but do not (re)start the service
#   --extras NAME         pip extras, e.g. `systemd` (systemd-python; needs libsystemd-dev and a compiler)
#   --wheel FILE          install this wheel first (repeatable), e.g. NVIDIA's onnxruntime_gpu for Jetson
#   --skip-dep NAME       do not install this runtime dependency from PyPI (the system provides it)
#   --system-site-packages  let the venv see the system's Python packages (JetPack's OpenCV)
#   --jetson              = --system-site-packages --skip-dep opencv-python-headless --skip-dep onnxruntime
#   --with-genicam        GenICam cameras: apt packages for Aravis 0.8 and building PyGObject, the pip extra
#                         `genicam`, a unit drop-in (AF_NETLINK for GigE discovery) and a GigE socket-buffer
#                         sysctl (staging writes the two files and installs nothing)
#   --python PY           interpreter for the venv (default python3, >= 3.10)
#   --src DIR             the edged checkout to install (default: the one this script is in)
#   --uninstall [--purge] remove; --purge also deletes config, data and the user
#   --root DIR            stage everything under DIR and never touch the machine: no user creation,
#                         no chown, no systemctl
#   --no-venv             skip the venv and pip (also EDGED_INSTALL_NO_VENV=1): a staging run then takes
#                         a second and needs no network (this is what the tests use)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
NO_VENV="${EDGED_INSTALL_NO_VENV:-0}"
NO_START=0
UNINSTALL=0
PURGE=0
JETSON=0
SYSTEM_SITE=0
PYTHON="${PYTHON:-python3}"
EXTRAS=""
BUNDLE=""
WHEELS=()
SKIP_DEPS=()
USER_NAME=edged
GENICAM=0
# Aravis (the library, its GObject typelib, the command-line tools) and what pip needs to build PyGObject
GENICAM_APT=(libaravis-0.8-0 gir1.2-aravis-0.8 aravis-tools-cli libgirepository1.0-dev libcairo2-dev
             pkg-config gcc python3-dev)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --no-venv) NO_VENV=1; shift ;;
    --no-start) NO_START=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    --src) SRC="${2:?--src needs a directory}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --extras) EXTRAS="${2:?--extras needs a value, e.g. systemd}"; shift 2 ;;   # e.g. systemd -> edged[systemd]
    --bundle) BUNDLE="${2:?--bundle needs a directory}"; shift 2 ;;
    --wheel) WHEELS+=("${2:?--wheel needs a file}"); shift 2 ;;               # installed before the package
    --skip-dep) SKIP_DEPS+=("${2:?--skip-dep needs a name}"); shift 2 ;;    # provided by the system instead
    --system-site-packages) SYSTEM_SITE=1; shift ;;
    --jetson) JETSON=1; shift ;;
    --with-genicam) GENICAM=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

if [[ "$JETSON" == 1 ]]; then
  # JetPack's OpenCV is built with GStreamer (CSI cameras, hardware decoding) and lives in the system
  # site-packages; the pip wheel would shadow it. onnxruntime-gpu comes from NVIDIA's Jetson builds
  # (--wheel FILE); the PyPI onnxruntime would be CPU-only and conflict with it.
  SYSTEM_SITE=1
  SKIP_DEPS+=(opencv-python-headless onnxruntime)
  [[ ${#WHEELS[@]} -gt 0 || "$NO_VENV" == 1 ]] || say "warning: --jetson without --wheel: no onnxruntime will be installed"
fi

if [[ "$GENICAM" == 1 ]]; then
  EXTRAS="${EXTRAS:+$EXTRAS,}genicam"
fi

STAGING=0
if [[ -n "$ROOT" ]]; then
  STAGING=1
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
elif [[ "$(id -u)" != 0 ]]; then
  die "run as root (sudo), or stage with --root DIR"
fi

OPT="$ROOT/opt/edged"
ETC="$ROOT/etc/edged"
VAR="$ROOT/var/lib/edged"
UNIT="$ROOT/etc/systemd/system/edged.service"
GENICAM_DROPIN="$ROOT/etc/systemd/system/edged.service.d/genicam.conf"
GENICAM_SYSCTL="$ROOT/etc/sysctl.d/60-edged-gige.conf"
LINK="$ROOT/usr/local/bin/edged"
CHANGED=0

# --- helpers: each writes only when the result would differ (idempotence: mtimes stay) -----------
ensure_dir() {  # DIR MODE [OWNER:GROUP]
  local dir="$1" mode="$2" owner="${3:-}"
  if [[ ! -d "$dir" ]]; then mkdir -p "$dir"; CHANGED=1; fi
  [[ "$(stat -c %a "$dir")" == "${mode#0}" ]] || chmod "$mode" "$dir"
  if [[ -n "$owner" && "$STAGING" == 0 ]]; then
    [[ "$(stat -c %U:%G "$dir")" == "$owner" ]] || chown "$owner" "$dir"
  fi
}

install_file() {  # SRC DEST MODE [OWNER:GROUP]: replace DEST atomically when its content differs
  local src="$1" dest="$2" mode="$3" owner="${4:-}"
  if [[ ! -f "$dest" ]] || ! cmp -s "$src" "$dest"; then
    local tmp
    tmp="$(mktemp "$dest.XXXXXX")"
    cat "$src" > "$tmp"
    chmod "$mode" "$tmp"
    [[ -z "$owner" || "$STAGING" == 1 ]] || chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    say "wrote ${dest#"$ROOT"}"
    CHANGED=1
  fi
  [[ "$(stat -c %a "$dest")" == "${mode#0}" ]] || chmod "$mode" "$dest"
  if [[ -n "$owner" && "$STAGING" == 0 ]]; then
    [[ "$(stat -c %U:%G "$dest")" == "$owner" ]] || chown "$owner" "$dest"
  fi
}

ensure_symlink() {  # TARGET LINK
  local target="$1" link="$2"
  if [[ "$(readlink "$link" 2>/dev/null || true)" != "$target" ]]; then
    ln -sfn "$target" "$link.tmp.$$"
    mv -fT "$link.tmp.$$" "$link"
    say "linked ${link#"$ROOT"} -> $target"
    CHANGED=1
  fi
}

systemctl_() { if [[ "$STAGING" == 0 ]] && command -v systemctl >/dev/null; then systemctl "$@"; fi; }

# --- uninstall ------------------------------------------------------------------------------------
if [[ "$UNINSTALL" == 1 ]]; then
  if [[ -f "$UNIT" ]]; then
    systemctl_ disable --now edged.service || true
    rm -f "$UNIT"
    systemctl_ daemon-reload || true
    say "removed the unit"
  fi
  rm -f "$GENICAM_DROPIN" "$GENICAM_SYSCTL"
  rmdir "$(dirname "$GENICAM_DROPIN")" 2>/dev/null || true
  if [[ -L "$LINK" ]]; then rm -f "$LINK"; fi
  rm -rf "$OPT"
  say "removed /opt/edged"
  if [[ "$PURGE" == 1 ]]; then
    rm -rf "$ETC" "$VAR" "$ROOT/var/cache/edged"
    if [[ "$STAGING" == 0 ]] && getent passwd "$USER_NAME" >/dev/null; then userdel "$USER_NAME" || true; fi
    say "purged /etc/edged, /var/lib/edged (database, images, bundles) and /var/cache/edged"
  else
    say "kept /etc/edged (config) and /var/lib/edged (database, images, bundles); --purge deletes them"
  fi
  exit 0
fi

[[ -f "$SRC/pyproject.toml" && -f "$SRC/deploy/edged.service" ]] || die "$SRC is not an edged checkout"

# --- user -----------------------------------------------------------------------------------------
if [[ "$STAGING" == 0 ]]; then
  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/edged --no-create-home \
            --shell /usr/sbin/nologin --comment "edged inspection daemon" "$USER_NAME"
    say "created system user $USER_NAME"
  fi
  # The unit's SupplementaryGroups=video fails (216/GROUP) when the group does not exist.
  getent group video >/dev/null || groupadd --system video
fi
OWN="$USER_NAME:$USER_NAME"

# --- GenICam: Aravis from the distribution (before pip, which builds PyGObject against it) ---------------
if [[ "$GENICAM" == 1 ]]; then
  if [[ "$STAGING" == 1 || "$NO_VENV" == 1 ]]; then
    say "--with-genicam: not installing apt packages here (${GENICAM_APT[*]})"
  else
    command -v apt-get >/dev/null || die "--with-genicam needs apt-get (install Aravis 0.8 yourself: deploy/README.md)"
    missing=()
    for pkg in "${GENICAM_APT[@]}"; do
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        || die "apt-get could not install ${missing[*]} (Aravis 0.8 is in Debian 12 and Ubuntu 22.04; see deploy/README.md)"
      CHANGED=1
    fi
  fi
fi

# --- program: /opt/edged ----------------------------------------------------------------------------
ensure_dir "$OPT" 0755
ensure_dir "$OPT/share" 0755
install_file "$SRC/config/edged.yaml" "$OPT/share/edged.yaml.example" 0644
install_file "$SRC/deploy/README.md" "$OPT/share/README.md" 0644

if [[ "$NO_VENV" != 1 ]]; then
  VENV="$OPT/venv"
  if [[ ! -x "$VENV/bin/python" ]]; then
    venv_args=()
    [[ "$SYSTEM_SITE" == 1 ]] && venv_args+=(--system-site-packages)
    "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  [[ ${#WHEELS[@]} -eq 0 ]] || "${PIP[@]}" "${WHEELS[@]}"
  # Build from a clean copy: pip builds in the source tree, and setuptools would leave build/ and
  # *.egg-info in the checkout and reuse a stale build/lib (files deleted from the source would
  # still be installed on the next update).
  BUILD_SRC="$(mktemp -d)"
  trap 'rm -rf "$BUILD_SRC"' EXIT
  if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard \
      | tar -C "$SRC" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$BUILD_SRC" -xf -
  else
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' -cf - . \
      | tar -C "$BUILD_SRC" -xf -
  fi
  # The device runs the daemon only: without tools/ the wheel has neither the training package nor the
  # edged-train command (setup.py declares it only when tools/ is there).
  rm -rf "$BUILD_SRC/tools"
  spec="$BUILD_SRC"
  [[ -z "$EXTRAS" ]] || spec="$BUILD_SRC[$EXTRAS]"
  if [[ ${#SKIP_DEPS[@]} -eq 0 ]]; then
    "${PIP[@]}" --upgrade "$spec"
  else
    # Install the package without its dependencies, then every runtime dependency except those the
    # system provides (JetPack's OpenCV, NVIDIA's onnxruntime-gpu).
    "${PIP[@]}" --upgrade --no-deps "$spec"
    mapfile -t deps < <("$VENV/bin/python" - "${SKIP_DEPS[@]}" <<'EOF'
import importlib.metadata as md, re, sys
skip = {s.lower().replace("_", "-") for s in sys.argv[1:]}
for req in md.requires("edged") or []:
    name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower().replace("_", "-")
    if "extra ==" not in req and name not in skip:
        print(req.split(";")[0].strip())
EOF
    )
    [[ ${#deps[@]} -eq 0 ]] || "${PIP[@]}" "${deps[@]}"
  fi
  # The daemon must never pull in the training stack.
  if "$VENV/bin/python" -c "import torch" 2>/dev/null; then say "warning: torch is importable in $VENV"; fi
  say "installed edged into ${VENV#"$ROOT"} ($("$VENV/bin/edged" --version 2>/dev/null || echo '?'))"
fi
ensure_dir "$ROOT/usr/local/bin" 0755
ensure_symlink /opt/edged/venv/bin/edged "$LINK"

# --- config: /etc/edged -------------------------------------------------------------------------------
ensure_dir "$ETC" 0750 "root:$USER_NAME"
if [[ -e "$ETC/edged.yaml" ]]; then
  if ! cmp -s "$SRC/config/edged.yaml" "$ETC/edged.yaml"; then
    say "kept your /etc/edged/edged.yaml (the shipped default is /opt/edged/share/edged.yaml.example)"
  fi
else
  install_file "$SRC/config/edged.yaml" "$ETC/edged.yaml" 0640 "root:$USER_NAME"
fi
for credential in mqtt-password web-password opcua-password; do
  if [[ ! -e "$ETC/$credential" ]]; then
    # Empty on purpose: LoadCredential= needs the file to exist; an empty one is not used (mqtt-password
    # only with mqtt.username, opcua-password only with opcua.username; web-password empty = no login,
    # refused off loopback). Write the password into it (one line), then `systemctl restart edged`.
    (umask 077 && : > "$ETC/$credential")
    [[ "$STAGING" == 1 ]] || chown root:root "$ETC/$credential"
    CHANGED=1
  fi
done

# --- data: /var/lib/edged -------------------------------------------------------------------------
ensure_dir "$VAR" 0750 "$OWN"
ensure_dir "$VAR/models" 0750 "$OWN"
if [[ -n "$BUNDLE" ]]; then
  [[ -f "$BUNDLE/manifest.json" ]] || die "--bundle $BUNDLE: no manifest.json (not a model bundle)"
  bundle_id="$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["bundle_id"])' "$BUNDLE/manifest.json")"
  [[ "$bundle_id" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--bundle: unusable bundle_id '$bundle_id'"
  if [[ ! -d "$VAR/models/$bundle_id" ]]; then
    cp -r "$BUNDLE" "$VAR/models/.$bundle_id.tmp"
    [[ "$STAGING" == 1 ]] || chown -R "$OWN" "$VAR/models/.$bundle_id.tmp"
    mv "$VAR/models/.$bundle_id.tmp" "$VAR/models/$bundle_id"
    say "copied bundle $bundle_id to /var/lib/edged/models/$bundle_id"
    CHANGED=1
  fi
  ensure_symlink "$bundle_id" "$VAR/models/current"
fi

# --- unit -----------------------------------------------------------------------------------------
ensure_dir "$ROOT/etc/systemd/system" 0755
UNIT_CHANGED_BEFORE=$CHANGED
CHANGED=0
install_file "$SRC/deploy/edged.service" "$UNIT" 0644
if [[ "$GENICAM" == 1 ]]; then
  ensure_dir "$(dirname "$GENICAM_DROPIN")" 0755
  install_file "$SRC/deploy/genicam/edged-genicam.conf" "$GENICAM_DROPIN" 0644
fi
UNIT_CHANGED=$CHANGED
CHANGED=$(( UNIT_CHANGED_BEFORE | UNIT_CHANGED ))
if [[ "$GENICAM" == 1 ]]; then
  ensure_dir "$ROOT/etc/sysctl.d" 0755
  SYSCTL_BEFORE=$CHANGED
  CHANGED=0
  install_file "$SRC/deploy/genicam/60-edged-gige.conf" "$GENICAM_SYSCTL" 0644
  if [[ "$CHANGED" == 1 && "$STAGING" == 0 ]] && command -v sysctl >/dev/null; then
    sysctl -q -p "$GENICAM_SYSCTL" || say "warning: could not apply $GENICAM_SYSCTL now (it applies at boot)"
  fi
  CHANGED=$(( SYSCTL_BEFORE | CHANGED ))
fi

if [[ "$STAGING" == 1 ]]; then
  say "staged under $ROOT (nothing on this machine was changed)"
  exit 0
fi

[[ "$UNIT_CHANGED" == 0 ]] || systemctl_ daemon-reload
systemctl_ enable edged.service >/dev/null 2>&1 || true
if [[ "$NO_START" == 1 ]]; then
  say "installed; not started (--no-start). Start with: systemctl start edged"
elif ! runuser -u "$USER_NAME" -- /opt/edged/venv/bin/edged check-config -c /etc/edged/edged.yaml; then
  say "the config is not ready to run (see above). Edit /etc/edged/edged.yaml, put a model bundle in"
  say "/var/lib/edged/models/current (or use --bundle DIR), then: systemctl restart edged"
elif systemctl_ is-active --quiet edged.service; then
  systemctl_ restart edged.service   # an install over a running daemon is an update
  say "restarted edged; check with: edged status   and   journalctl -u edged -f"
else
  systemctl_ start edged.service
  say "started edged; check with: edged status   and   journalctl -u edged -f"
fi
