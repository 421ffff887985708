#!/usr/bin/env bash
# Install callwatch as a systemd service on Raspberry Pi OS Trixie or Bookworm (aarch64), or
# Debian 13 or 12: Python 3.11, 3.12 or 3.13 (the system python3 of each).
#
#   sudo systemd/install.sh MODEL            install or upgrade; MODEL = model.tflite with its
#                                            model.json beside it, or a run folder
#   sudo systemd/install.sh                  upgrade the code, keep the installed model
#   sudo systemd/install.sh --uninstall      remove service, venv and model (keeps config,
#                                            password and /var/lib/callwatch: unsent events)
#   sudo systemd/install.sh --uninstall --purge   remove those too
#
# Lays down (paths under DESTDIR when given):
#   /opt/callwatch/venv/                     Python venv with the device profile only (no TensorFlow)
#   /opt/callwatch/model/                    model.json, model.tflite (+ variants such as Edge TPU)
#   /etc/callwatch/config.yaml               commented config; never overwritten
#   /etc/callwatch/mqtt_password             empty, mode 0600; never overwritten (LoadCredential=)
#   /etc/systemd/system/callwatch.service    the unit
#   /etc/systemd/system/callwatch.service.d/edgetpu.conf   with --edgetpu only
#   /etc/systemd/system/callwatch.service.d/tls-key.conf   when /etc/callwatch/mqtt_client.key
#                                            exists: the service (a DynamicUser, which cannot
#                                            read a root-only key) gets it as the credential
#                                            mqtt_client_key; set mqtt.tls.key_file to
#                                            /run/credentials/callwatch.service/mqtt_client_key
#
# Options:
#   --prefix DIR     venv and model location (default /opt/callwatch)
#   --destdir DIR    stage every file under DIR (also $DESTDIR); implies --no-system
#   --no-system      no root check, apt-get or systemctl
#   --python PY      interpreter for the venv (default: the system python3; 3.11, 3.12 or 3.13)
#   --skip-pip       create the venv but only print the pip command (tests: no network);
#                    the project is then imported from this checkout with --python
#   --edgetpu        let the service reach a Coral USB accelerator (drop-in)
#   --uninstall, --purge   see above
#
# Safe to run again: it replaces the code, the unit and (when given) the model, and restarts
# the service; it never touches an existing config or password.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/callwatch
destdir=${DESTDIR:-}
system=1
python=""
skip_pip=0
edgetpu=0
uninstall=0
purge=0
model=""

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift ;;
    --no-system) system=0 ;;
    --python) python=${2:?--python needs an interpreter}; shift ;;
    --skip-pip) skip_pip=1 ;;
    --edgetpu) edgetpu=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$model" ] || die "one model only, got $model and $1"; model=$1 ;;
  esac
  shift
done

case $prefix in /*) ;; *) die "--prefix must be an absolute path, got $prefix" ;; esac
[ "$prefix" != / ] || die "--prefix must not be /"
if [ -n "$destdir" ]; then
  system=0
  mkdir -p "$destdir"
  destdir=$(cd "$destdir" && pwd)
fi
root=$destdir                         # every path below is written under $root
venv=$prefix/venv
modeldir=$prefix/model
etc=/etc/callwatch
unitdir=/etc/systemd/system
unit=$unitdir/callwatch.service
dropin=$unitdir/callwatch.service.d
systemd_running() { [ "$system" = 1 ] && [ -d /run/systemd/system ]; }

if [ "$system" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo $0 ...), or stage the files with --destdir DIR"
fi

# ---------------------------------------------------------------- uninstall
if [ "$uninstall" = 1 ]; then
  if systemd_running; then
    systemctl disable --now callwatch.service 2>/dev/null || true
  fi
  rm -f "$root$unit"
  rm -rf "$root$dropin"
  systemd_running && systemctl daemon-reload
  rm -rf "$root$venv" "$root$modeldir"
  rmdir "$root$prefix" 2>/dev/null || true
  if [ "$purge" = 1 ]; then
    rm -f "$root$etc/config.yaml" "$root$etc/mqtt_password"
    rmdir "$root$etc" 2>/dev/null || true
    rm -rf "$root/var/lib/callwatch" "$root/var/lib/private/callwatch"
    say "removed callwatch, its config and its state"
  else
    say "removed callwatch; kept $etc and /var/lib/callwatch (use --purge to remove them)"
  fi
  exit 0
fi

# ---------------------------------------------------------------- Debian packages
if [ "$system" = 1 ]; then
  debs=(libportaudio2 python3-venv)
  missing=()
  for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# ---------------------------------------------------------------- venv (device profile only)
supported="3.11 3.12 3.13"              # pyproject.toml's requires-python
if [ -z "$python" ]; then
  # The system python3 when it is a supported version (Trixie: 3.13, Bookworm: 3.11), else
  # the newest supported pythonX.Y on PATH.
  python=python3
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  case " $supported " in
    *" $version "*) ;;
    *) for v in 3.13 3.12 3.11; do
         if command -v "python$v" >/dev/null; then python=python$v; break; fi
       done ;;
  esac
fi
command -v "$python" >/dev/null || die "no Python interpreter '$python': install python3 (3.11, 3.12 or 3.13) and python3-venv"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case " $supported " in
  *" $version "*) ;;
  *) die "$python is Python $version; callwatch runs on Python 3.11, 3.12 or 3.13 (Raspberry Pi OS Bookworm has 3.11, Trixie 3.13): pass one with --python" ;;
esac

if [ ! -x "$root$venv/bin/python" ]; then
  say "creating $venv"
  mkdir -p "$root$prefix"
  if [ "$skip_pip" = 1 ]; then
    "$python" -m venv --without-pip "$root$venv"
  else
    "$python" -m venv "$root$venv"
  fi
elif [ "$skip_pip" = 0 ] && ! "$root$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  "$root$venv/bin/python" -m ensurepip --upgrade >/dev/null   # a venv left by --skip-pip
fi
# No extras: the project's plain dependencies are the device profile (pyproject.toml).
pip_cmd=("$venv/bin/python" -m pip install --disable-pip-version-check --upgrade "$src")
if [ "$skip_pip" = 1 ]; then
  say "skip-pip: would run: ${pip_cmd[*]}"
  # Import the project from this checkout with the given interpreter instead.
  tool_python=("env" "PYTHONPATH=$src" "$python")
else
  say "installing the device profile into $venv"
  pip_cmd[0]=$root$venv/bin/python
  "${pip_cmd[@]}" -q
  tool_python=("$root$venv/bin/python")
  if "${tool_python[@]}" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("tensorflow") is None)'; then
    die "TensorFlow ended up in $venv; the device profile must not pull it (check pyproject.toml)"
  fi
fi

# ---------------------------------------------------------------- model bundle and config
if [ -n "$model" ]; then
  [ -e "$model" ] || die "$model: no such model file or folder"
elif [ ! -f "$root$modeldir/model.json" ]; then
  die "no model installed yet: pass a model bundle (model.tflite with model.json beside it, or a run folder)"
fi
mkdir -p "$root$etc"
chmod 0755 "$root$etc"
staging=$root$prefix/model.new
rm -rf "$staging"
new_config=""
[ -f "$root$etc/config.yaml" ] || new_config=$root$etc/config.yaml.new
# One Python run (its imports take seconds on a Pi): copy the manifest, the model it names and
# its variants (model_edgetpu.tflite) and verify the copy, so that a bad bundle never replaces
# the installed one; write the commented config when there is none; validate the config.
"${tool_python[@]}" - "$model" "$staging" "$new_config" "$root$etc/config.yaml" \
    "$modeldir" "$venv" "$etc" <<'PY' || { rm -rf "$staging" "$new_config"; exit 2; }
import shutil
import sys
from pathlib import Path

from device.bundle import MANIFEST_NAME, BundleError, load_bundle
from device.config import ConfigError, commented_yaml, load_config

model, staging, new_config, config, model_dir, venv, etc = sys.argv[1:]
try:
    if model:
        bundle = load_bundle(model)
        files = [MANIFEST_NAME, bundle.manifest["model_file"]]
        files += [entry["file"] for entry in bundle.variants.values()]
        Path(staging).mkdir(parents=True)
        for name in files:
            shutil.copyfile(bundle.model_path.parent / name, Path(staging) / name)
        copied = load_bundle(Path(staging) / bundle.manifest["model_file"])
        for name in copied.variants:
            copied.variant_path(name)
        print(f"install.sh: model verified: {', '.join(copied.labels)} ({', '.join(files)})")
    if new_config:
        header = (
            "# callwatch field configuration, written by systemd/install.sh; yours to edit (a\n"
            "# re-install keeps it). Every key is optional and shows its default.\n"
            f"# Check it: {venv}/bin/python -m device --check-config --config {etc}/config.yaml\n"
            f"# The MQTT password goes into {etc}/mqtt_password, never here.\n\n")
        overrides = {"detection": {"model": model_dir}, "mqtt": {"enabled": True}}
        Path(new_config).write_text(header + commented_yaml(overrides))
    load_config(new_config or config)
except (BundleError, ConfigError, OSError) as exc:
    sys.exit(f"install.sh: {exc}")
PY
if [ -n "$model" ]; then
  rm -rf "$root$modeldir"
  mv "$staging" "$root$modeldir"
  chmod 0755 "$root$modeldir"
  chmod 0644 "$root$modeldir"/*
fi
if [ -n "$new_config" ]; then
  chmod 0644 "$new_config"
  mv "$new_config" "$root$etc/config.yaml"
  say "wrote $etc/config.yaml (set mqtt.host and audio.device there)"
else
  say "kept the existing $etc/config.yaml"
fi
if [ ! -f "$root$etc/mqtt_password" ]; then
  (umask 077 && : >"$root$etc/mqtt_password")
fi
chmod 0600 "$root$etc/mqtt_password"

# ---------------------------------------------------------------- unit
mkdir -p "$root$unitdir"
sed "s#/opt/callwatch#$prefix#g" "$src/systemd/callwatch.service" >"$root$unit.new"
mv "$root$unit.new" "$root$unit"
chmod 0644 "$root$unit"
if [ -f "$root$etc/mqtt_client.key" ]; then
  chmod 0600 "$root$etc/mqtt_client.key"
  mkdir -p "$root$dropin"
  cat >"$root$dropin/tls-key.conf" <<'EOF'
# The TLS client key stays root-only (0600) in /etc/callwatch; systemd hands the service a
# copy only it can read. In config.yaml:
#   mqtt.tls.key_file: /run/credentials/callwatch.service/mqtt_client_key
[Service]
LoadCredential=mqtt_client_key:/etc/callwatch/mqtt_client.key
EOF
  chmod 0644 "$root$dropin/tls-key.conf"
  say "TLS client key: set mqtt.tls.key_file to /run/credentials/callwatch.service/mqtt_client_key"
elif [ -f "$root$dropin/tls-key.conf" ]; then
  rm -f "$root$dropin/tls-key.conf"
fi
if [ "$edgetpu" = 1 ]; then
  mkdir -p "$root$dropin"
  cat >"$root$dropin/edgetpu.conf" <<'EOF'
# Coral USB accelerator: libedgetpu talks to /dev/bus/usb (group plugdev, from its udev rule)
# and follows the device through its re-enumeration after the firmware load (netlink).
[Service]
DeviceAllow=char-usb_device rw
SupplementaryGroups=plugdev
RestrictAddressFamilies=AF_NETLINK
EOF
  chmod 0644 "$root$dropin/edgetpu.conf"
fi

if systemd_running; then
  systemctl daemon-reload
  systemctl enable callwatch.service
  # --no-block: READY=1 waits for audio; without a microphone the start would hold this
  # script for TimeoutStartSec.
  systemctl restart --no-block callwatch.service
  say "callwatch (re)started: systemctl status callwatch; journalctl -u callwatch -f"
else
  say "installed under ${root:-/}; not starting the service (systemd not running or --no-system/--destdir)"
fi
