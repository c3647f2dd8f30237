#!/usr/bin/env bash
# realtime-speaker installer: run it from a clone of the repository, as root (or with sudo).
#
#   sudo scripts/install.sh              the speaker on this Raspberry Pi: Debian packages, user
#                                        `speaker`, venv in /opt/realtime-speaker, config in
#                                        /etc/speaker, systemd unit enabled and started
#   sudo scripts/install.sh --tokens     the token service (speaker-tokens) on the home server
#
# Re-running it upgrades in place: the code is reinstalled, config, secrets and state are kept.
# `--uninstall` removes what it installed (config and state kept unless `--purge`).
# `scripts/install.sh --help` lists every option.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/install.sh [--tokens] [--uninstall [--purge]] [options]

  --tokens          install (or uninstall) the token service speaker-tokens instead of the speaker
  --uninstall       stop and remove the service, its unit, the venv and the commands;
                    config, secrets and state are kept
  --purge           with --uninstall: also remove config, secrets, state and the system user
  --no-gpio         a Linux box without GPIO: no gpio/spi groups, no Raspberry Pi 5 GPIO backend
  --dry-run         print what would be done, change nothing
  --prefix DIR      install under DIR instead of / (a test root); implies --no-users
  --no-systemd      do not call systemctl (no daemon-reload, enable, start)
  --no-apt          do not install Debian packages
  --no-users        do not create the system user (files get the owner from --user/--group
                    when those exist, else root)
  --no-check        do not run `speaker check` at the end
  --user NAME       service user (default speaker, or speaker-tokens with --tokens)
  --group NAME      its group (default: same as the user)
  --python PATH     the Python for the venv (default python3; 3.11 or newer)
  --system-site-packages
                    let the venv see the system's Python packages (with --pip-args=--no-deps,
                    an install that needs no network)
  --pip-args ARGS   extra arguments for `pip install` (one string, split on spaces)
  -h, --help        this text
EOF
}

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPONENT=speaker
ACTION=install
PURGE=0
GPIO=1
DRY=0
PREFIX=/
SYSTEMD=1
APT=1
USERS=1
CHECK=1
SVC_USER=""
SVC_GROUP=""
PYTHON=python3
SITE=0
PIP_ARGS=""

while [ $# -gt 0 ]; do
    case "$1" in
        --tokens) COMPONENT=tokens ;;
        --uninstall) ACTION=uninstall ;;
        --purge) PURGE=1 ;;
        --no-gpio) GPIO=0 ;;
        --dry-run) DRY=1 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --no-systemd) SYSTEMD=0 ;;
        --no-apt) APT=0 ;;
        --no-users) USERS=0 ;;
        --no-check) CHECK=0 ;;
        --user) SVC_USER="${2:?--user needs a name}"; shift ;;
        --group) SVC_GROUP="${2:?--group needs a name}"; shift ;;
        --python) PYTHON="${2:?--python needs a path}"; shift ;;
        --system-site-packages) SITE=1 ;;
        --pip-args) PIP_ARGS="${2?--pip-args needs a value}"; shift ;;
        --pip-args=*) PIP_ARGS="${1#*=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi
PREFIX="${PREFIX%/}"               # "" for the real root
if [ -n "$PREFIX" ]; then
    PREFIX="$(mkdir -p "$PREFIX" && cd "$PREFIX" && pwd)"
    USERS=0                        # the system's user database is not under the prefix
fi
if [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run it as root (sudo scripts/install.sh ...), or add --dry-run to see what it does" >&2
    exit 1
fi

# ---- what goes where ----------------------------------------------------------------------------
APP_DIR="$PREFIX/opt/realtime-speaker"
VENV="$APP_DIR/venv"
BIN_DIR="$PREFIX/usr/local/bin"
UNIT_DIR="$PREFIX/etc/systemd/system"
if [ "$COMPONENT" = speaker ]; then
    NAME=speaker
    DEFAULT_USER=speaker
    CONF_DIR="$PREFIX/etc/speaker"
    CONF_FILE="$CONF_DIR/speaker.toml"
    CONF_SRC="$SRC/config/speaker.toml"
    STATE_DIR="$PREFIX/var/lib/realtime-speaker"
    COMMANDS=(speaker)
    OTHER_UNIT="$UNIT_DIR/speaker-tokens.service"
else
    NAME=speaker-tokens
    DEFAULT_USER=speaker-tokens
    CONF_DIR="$PREFIX/etc/speaker-tokens"
    CONF_FILE="$CONF_DIR/tokens.toml"
    CONF_SRC="$SRC/config/tokens.toml"
    STATE_DIR=""                   # the token service keeps no state
    COMMANDS=(speaker-tokens)
    OTHER_UNIT="$UNIT_DIR/speaker.service"
fi
UNIT_FILE="$UNIT_DIR/$NAME.service"
UNIT_SRC="$SRC/systemd/$NAME.service"
SVC_USER="${SVC_USER:-$DEFAULT_USER}"
SVC_GROUP="${SVC_GROUP:-$SVC_USER}"
APT_PACKAGES=(python3-venv python3-dev gcc libasound2-dev alsa-utils)
# gpiozero's GPIO backend on a Raspberry Pi 5 is lgpio. It has no wheel for Python 3.13 (Raspberry
# Pi OS trixie), so pip builds it from source there: with swig, and linked statically (PYPI=1, as
# lgpio's own wheels are), since Debian has no liblgpio to link against.
MODEL_FILE="${SPEAKER_MODEL_FILE:-/proc/device-tree/model}"
PI5=0
if [ "$COMPONENT" = speaker ] && [ "$GPIO" = 1 ] && grep -qs "Raspberry Pi 5" "$MODEL_FILE"; then
    PI5=1
    APT_PACKAGES+=(swig)
fi

say() { printf '%s\n' "$*"; }
note() { printf 'note: %s\n' "$*"; }
run() {
    # Every change goes through here: printed, and skipped in a dry run.
    printf '+ %s\n' "$*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}
exists_group() { getent group "$1" >/dev/null 2>&1; }
exists_user() { getent passwd "$1" >/dev/null 2>&1; }

owner_group() {
    # The group files are given to: the service's group when it exists (or will), else root.
    if exists_group "$SVC_GROUP" || { [ "$USERS" = 1 ] && [ "$DRY" = 1 ]; }; then
        printf '%s' "$SVC_GROUP"
    else
        printf 'root'
    fi
}

owner_user() {
    if exists_user "$SVC_USER" || { [ "$USERS" = 1 ] && [ "$DRY" = 1 ]; }; then
        printf '%s' "$SVC_USER"
    else
        printf 'root'
    fi
}

# Supplementary groups of the speaker's user: those this machine has.
speaker_groups() {
    local wanted=(audio) found=() g
    [ "$GPIO" = 1 ] && wanted+=(gpio spi)
    for g in "${wanted[@]}"; do
        if exists_group "$g"; then
            found+=("$g")
        else
            note "group '$g' does not exist on this machine: skipped (no ${g} devices here?)" >&2
        fi
    done
    printf '%s' "${found[*]}"
}

# ---- install -----------------------------------------------------------------------------------
install_packages() {
    if [ "$APT" = 0 ]; then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        note "no apt-get: install ${APT_PACKAGES[*]} (or your system's equivalents) yourself"
        return
    fi
    run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
}

create_user() {
    local groups
    groups="$1"
    if [ "$USERS" = 0 ]; then
        if ! exists_user "$SVC_USER"; then
            note "user '$SVC_USER' not created (--no-users or --prefix): files are owned by root"
        fi
        return
    fi
    if ! exists_group "$SVC_GROUP"; then
        run groupadd --system "$SVC_GROUP"
    fi
    if ! exists_user "$SVC_USER"; then
        run useradd --system --gid "$SVC_GROUP" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$SVC_USER"
    fi
    if [ -n "$groups" ]; then
        run usermod --append --groups "${groups// /,}" "$SVC_USER"
    fi
}

install_venv() {
    local extras="" pip_args=()
    if [ -n "$PIP_ARGS" ]; then
        read -r -a pip_args <<<"$PIP_ARGS"
    fi
    run install -d -m 0755 "$APP_DIR"
    if [ ! -x "$VENV/bin/python" ]; then
        if [ "$SITE" = 1 ]; then
            run "$PYTHON" -m venv --system-site-packages "$VENV"
        else
            run "$PYTHON" -m venv "$VENV"
        fi
    else
        say "upgrading the venv in $VENV"
    fi
    if [ "$PI5" = 1 ]; then
        extras="[pi5]"
    fi
    # Built from a copy: pip would leave a root-owned build/ in the clone, whose stale files a
    # later build could pick up.
    local build
    build="$(mktemp -d)"
    run cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/device" "$SRC/services" "$build/"
    local build_env=()
    if [ "$PI5" = 1 ]; then
        build_env=(PYPI=1)        # lgpio, where pip builds it from source (see APT_PACKAGES)
    fi
    run env "${build_env[@]}" "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "${pip_args[@]}" "$build$extras"
    rm -rf "$build"
    run install -d -m 0755 "$BIN_DIR"
    local cmd
    for cmd in "${COMMANDS[@]}"; do
        run ln -sfn "$VENV/bin/$cmd" "$BIN_DIR/$cmd"
    done
}

install_config() {
    local group
    group="$(owner_group)"
    run install -d -m 0750 -o root -g "$group" "$CONF_DIR"
    if [ -e "$CONF_FILE" ]; then
        say "keeping $CONF_FILE"
        # Permissions are set again: an old install may have left it world-readable.
        run chown "root:$group" "$CONF_FILE"
        run chmod 0640 "$CONF_FILE"
    else
        run install -m 0640 -o root -g "$group" "$CONF_SRC" "$CONF_FILE"
    fi
    if [ "$COMPONENT" = tokens ] && [ ! -e "$CONF_DIR/openai.key" ]; then
        # Empty until the person puts the API key in; readable by the service user only.
        run install -m 0600 -o "$(owner_user)" -g "$group" /dev/null "$CONF_DIR/openai.key"
    fi
    if [ -n "$STATE_DIR" ] && [ -n "$PREFIX" ]; then
        # systemd creates the real one (StateDirectory=); a test root gets it here.
        run install -d -m 0750 -o "$(owner_user)" -g "$group" "$STATE_DIR"
    fi
}

install_unit() {
    local groups="$1" tmp
    run install -d -m 0755 "$UNIT_DIR"
    tmp="$(mktemp)"
    # The unit as shipped, with paths under the prefix and the supplementary groups this machine has.
    sed -e "s#/opt/realtime-speaker/#$APP_DIR/#g" \
        -e "s#/etc/speaker-tokens/#$PREFIX/etc/speaker-tokens/#g" \
        -e "s#/etc/speaker/#$PREFIX/etc/speaker/#g" \
        -e "s#^User=.*#User=$SVC_USER#" -e "s#^Group=.*#Group=$SVC_GROUP#" \
        "$UNIT_SRC" >"$tmp"
    if [ "$COMPONENT" = speaker ]; then
        if [ -n "$groups" ]; then
            sed -i -e "s#^SupplementaryGroups=.*#SupplementaryGroups=$groups#" "$tmp"
        else
            sed -i -e "/^SupplementaryGroups=/d" "$tmp"
        fi
    fi
    run install -m 0644 "$tmp" "$UNIT_FILE"
    rm -f "$tmp"
    if [ "$SYSTEMD" = 1 ]; then
        run systemctl daemon-reload
        run systemctl enable "$NAME.service"
    fi
}

stop_service() {
    if [ "$SYSTEMD" = 0 ] || [ "$CHECK" = 0 ]; then
        return
    fi
    run systemctl stop "$NAME.service" || true
}

start_service() {
    if [ "$SYSTEMD" = 0 ]; then
        return
    fi
    if [ "$COMPONENT" = tokens ] && [ ! -s "$CONF_DIR/openai.key" ]; then
        note "$NAME not started: put the API key in $CONF_DIR/openai.key first"
        return
    fi
    # restart: a re-run (upgrade) must load the new code.
    run systemctl restart "$NAME.service"
}

run_check() {
    [ "$CHECK" = 1 ] || return 0
    say ""
    if [ "$COMPONENT" = speaker ]; then
        say "speaker check --config $CONF_FILE"
        if [ "$DRY" = 0 ]; then
            # As the service's user when there is one, so permissions are those the daemon will have; in
            # the service's state directory, where the check keeps the echo path it learnt for the daemon.
            if exists_user "$SVC_USER" && [ -z "$PREFIX" ] && command -v runuser >/dev/null 2>&1; then
                runuser -u "$SVC_USER" -- env STATE_DIRECTORY="$STATE_DIR" "$VENV/bin/speaker" check --config "$CONF_FILE" || true
            else
                STATE_DIRECTORY="$STATE_DIR" "$VENV/bin/speaker" check --config "$CONF_FILE" || true
            fi
        fi
    else
        say "speaker-tokens --help"
        if [ "$DRY" = 0 ]; then
            "$VENV/bin/speaker-tokens" --help >/dev/null && say "ok    speaker-tokens runs"
        fi
    fi
}

next_steps() {
    say ""
    if [ "$COMPONENT" = speaker ]; then
        cat <<EOF
Installed. What to edit in $CONF_FILE (then: sudo systemctl restart speaker):
  [audio] input / output   your microphone and speaker (arecord -L and aplay -L list them)
  [auth]  token_url        your token service, and device_secret_file (mode 0640, group $SVC_GROUP)
  [mqtt]  host, device_id  your broker; remove the section to run without MQTT
  [gpio] / [leds]          buttons and LEDs, if the device has them
Check it:  sudo speaker check --config /etc/speaker/speaker.toml
Watch it:  journalctl -u speaker -f        What it does now:  sudo speaker status --config /etc/speaker/speaker.toml
EOF
    else
        cat <<EOF
Installed. Next:
  1. put the OpenAI API key in $CONF_DIR/openai.key (one line; the file stays 0600, owner $SVC_USER)
  2. check $CONF_FILE ([server] host/port, [limits])
  3. register each speaker: sudo speaker-tokens add-device kitchen --config /etc/speaker-tokens/tokens.toml
  4. sudo systemctl restart speaker-tokens        logs: journalctl -u speaker-tokens -f
EOF
    fi
}

do_install() {
    local groups=""
    [ -f "$UNIT_SRC" ] || { echo "install.sh: $UNIT_SRC not found: run it from a clone of realtime-speaker" >&2; exit 1; }
    if [ -e "$UNIT_FILE" ]; then
        say "upgrading $NAME (config, secrets and state are kept)"
    else
        say "installing $NAME under ${PREFIX:-/}"
    fi
    install_packages
    if [ "$COMPONENT" = speaker ]; then
        groups="$(speaker_groups)"
    fi
    create_user "$groups"
    install_venv
    install_config
    install_unit "$groups"
    if [ "$COMPONENT" = speaker ]; then
        # The check before the start: it opens the microphone and the speaker, which a card that cannot be
        # opened twice (most hw: devices) would refuse it while the daemon (an earlier install's) holds them.
        stop_service
        run_check
        start_service
    else
        start_service
        run_check
    fi
    next_steps
}

# ---- uninstall ---------------------------------------------------------------------------------
do_uninstall() {
    say "removing $NAME from ${PREFIX:-/}"
    if [ "$SYSTEMD" = 1 ] && [ -e "$UNIT_FILE" ]; then
        run systemctl disable --now "$NAME.service" || true
    fi
    if [ -e "$UNIT_FILE" ]; then
        run rm -f "$UNIT_FILE"
    fi
    if [ "$SYSTEMD" = 1 ]; then
        run systemctl daemon-reload
    fi
    local cmd
    for cmd in "${COMMANDS[@]}"; do
        if [ -L "$BIN_DIR/$cmd" ]; then
            run rm -f "$BIN_DIR/$cmd"
        fi
    done
    # The venv is shared by the speaker and the token service: it goes with the last of them.
    if [ -e "$OTHER_UNIT" ]; then
        note "the venv $VENV stays: the other service ($(basename "$OTHER_UNIT")) uses it"
    elif [ -d "$APP_DIR" ]; then
        run rm -rf "$APP_DIR"
    fi
    if [ "$PURGE" = 1 ]; then
        run rm -rf "$CONF_DIR"
        if [ -n "$STATE_DIR" ]; then
            run rm -rf "$STATE_DIR"
        fi
        if [ "$USERS" = 1 ] && exists_user "$SVC_USER"; then
            run userdel "$SVC_USER"
        fi
        if [ "$USERS" = 1 ] && exists_group "$SVC_GROUP"; then
            run groupdel "$SVC_GROUP" || true
        fi
    else
        say "kept: $CONF_DIR${STATE_DIR:+ and $STATE_DIR} (remove them with --uninstall --purge)"
    fi
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
