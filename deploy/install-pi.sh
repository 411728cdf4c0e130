#!/usr/bin/env bash
# Install edgecam as a systemd service on Raspberry Pi OS (Bookworm, 64-bit), from this checkout.
#
#   sudo deploy/install-pi.sh                 # install or update, enable and (re)start the service
#   deploy/install-pi.sh --dry-run            # print what it would do, change nothing (no root needed)
#
# Steps, each skipped when already done (so running it again is safe, and is how you update):
#   1. apt packages: python3-venv, python3-picamera2 (libcamera's Python binding, only from apt)
#   2. service user 'edgecam' (system user, no login, group video for the camera)
#   3. venv PREFIX/venv with --system-site-packages (so apt's picamera2 is importable), edgecam installed
#      into it with deploy/pi-constraints.txt (numpy < 2: apt's picamera2 stack is built against numpy 1.24)
#   4. every shipped model verified (sha256, input spec, a forward pass)
#   5. /etc/edgecam (root:edgecam 0750) with config.yaml from --config unless one is there already,
#      then 'edgecam check-config'; /var/lib/edgecam (edgecam 0750) for the outbox and gallery
#   6. systemd/edgecam.service -> /etc/systemd/system (ExecStart pointed at PREFIX), daemon-reload, enable,
#      and restart unless --no-start
#
# Options:
#   --dry-run        print the commands instead of running them ('+' would run, '=' already done)
#   --prefix DIR     install root of the venv (default /opt/edgecam)
#   --config FILE    config to install when /etc/edgecam/config.yaml does not exist
#                    (default deploy/configs/pi-front-door.yaml)
#   --user NAME      service user (default edgecam; the unit file names edgecam: change both together)
#   --no-apt         skip apt-get (packages installed by hand)
#   --no-start       install and enable, do not (re)start now
#   --force          go on on another OS or a 32-bit system (onnxruntime has no 32-bit ARM wheels)
#   --root DIR       look for and put files under DIR (DIR/etc, DIR/opt, DIR/var): with --dry-run, for tests
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0 PREFIX=/opt/edgecam CONFIG="$REPO/deploy/configs/pi-front-door.yaml" SVC_USER=edgecam
APT=1 START=1 FORCE=0 ROOT=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
        --config) CONFIG="${2:?--config needs a file}"; shift ;;
        --user) SVC_USER="${2:?--user needs a name}"; shift ;;
        --no-apt) APT=0 ;;
        --no-start) START=0 ;;
        --force) FORCE=1 ;;
        --root) ROOT="${2:?--root needs a folder}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-pi.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ETC="$ROOT/etc/edgecam" STATE="$ROOT/var/lib/edgecam" UNIT_DIR="$ROOT/etc/systemd/system"
VENV="$ROOT$PREFIX/venv"

say() { echo "$*"; }
done_() { echo "= $*"; }
die() { echo "install-pi.sh: $*" >&2; exit 2; }
# run CMD...: print it, and run it unless --dry-run
run() {
    echo "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

preflight() {
    [ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
    [ -f "$REPO/pyproject.toml" ] && [ -f "$REPO/systemd/edgecam.service" ] || die "$REPO is not an edgecam checkout"
    if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
        die "needs root: run 'sudo $0' (or '$0 --dry-run' to see what it would do)"
    fi
    local codename arch
    codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")" || codename=unknown
    arch="$(uname -m)"
    if [ "$codename" != bookworm ]; then
        say "warning: this is '$codename', the script is written for Raspberry Pi OS Bookworm"
    fi
    case "$arch" in
        aarch64) ;;
        armv6l|armv7l)
            local msg="a 32-bit OS ($arch): onnxruntime has no 32-bit ARM wheels; install the 64-bit Raspberry Pi OS"
            if [ "$FORCE" = 1 ] || [ "$DRY_RUN" = 1 ]; then say "warning: $msg"; else die "$msg (or --force)"; fi ;;
        *) say "warning: $arch is not a Raspberry Pi (aarch64); going on" ;;
    esac
}

step_apt() {
    say "# 1. apt packages"
    if [ "$APT" = 0 ]; then done_ "apt skipped (--no-apt)"; return; fi
    local missing=() pkg
    for pkg in python3-venv python3-pip python3-picamera2; do
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            done_ "$pkg installed"
        else
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        run apt-get update
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

step_user() {
    say "# 2. service user"
    if id -u "$SVC_USER" >/dev/null 2>&1; then
        done_ "user $SVC_USER exists"
    else
        run useradd --system --user-group --no-create-home --home-dir /var/lib/edgecam \
            --shell /usr/sbin/nologin "$SVC_USER"
    fi
    if id -nG "$SVC_USER" 2>/dev/null | tr ' ' '\n' | grep -qx video; then
        done_ "$SVC_USER is in group video"
    else
        run usermod --append --groups video "$SVC_USER"
    fi
}

step_venv() {
    say "# 3. venv $VENV (--system-site-packages) with edgecam"
    if [ -x "$VENV/bin/python" ]; then
        if grep -qi "include-system-site-packages *= *true" "$VENV/pyvenv.cfg" 2>/dev/null; then
            done_ "venv exists"
        else
            die "$VENV exists without --system-site-packages (picamera2 would not import): remove it and run again"
        fi
    else
        run mkdir -p "$(dirname "$VENV")"
        run python3 -m venv --system-site-packages "$VENV"
    fi
    run "$VENV/bin/python" -m pip install --quiet --constraint "$REPO/deploy/pi-constraints.txt" "$REPO"
}

step_models() {
    say "# 4. models"
    run "$VENV/bin/edgecam" models verify
}

step_config() {
    say "# 5. config $ETC/config.yaml and state $STATE"
    run install -d -m 0750 -o root -g "$SVC_USER" "$ETC"
    if [ -f "$ETC/config.yaml" ]; then
        done_ "keeping the existing $ETC/config.yaml"
    else
        run install -m 0640 -o root -g "$SVC_USER" "$CONFIG" "$ETC/config.yaml"
    fi
    run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE"
    run "$VENV/bin/edgecam" check-config "$ETC/config.yaml"
}

step_unit() {
    say "# 6. systemd unit"
    local unit tmp
    unit="$UNIT_DIR/edgecam.service"
    tmp="$(mktemp)"
    sed "s#/opt/edgecam/venv#$PREFIX/venv#g" "$REPO/systemd/edgecam.service" > "$tmp"
    say "# the unit is systemd/edgecam.service with ExecStart under $PREFIX/venv"
    if [ -f "$unit" ] && cmp -s "$tmp" "$unit"; then
        done_ "$unit is up to date"
    else
        run install -D -m 0644 "$tmp" "$unit"
        run systemctl daemon-reload
    fi
    rm -f "$tmp"
    run systemctl enable edgecam.service
    if [ "$START" = 1 ]; then
        run systemctl restart edgecam.service
        say "# follow it with: journalctl -u edgecam -f"
    else
        done_ "not started (--no-start): sudo systemctl start edgecam"
    fi
}

main() {
    preflight
    [ "$DRY_RUN" = 1 ] && say "# dry run: nothing is changed"
    step_apt
    step_user
    step_venv
    step_models
    step_config
    step_unit
    say "# done: edgecam installed in $PREFIX, config $ETC/config.yaml, state $STATE"
}

main
