#!/usr/bin/env bash
# Runs the tests that need no real-time pace on a Raspberry Pi OS-like 64-bit ARM system, on any
# Debian machine: a Debian arm64 root (bookworm: Python 3.11; trixie: Python 3.13) under QEMU's
# user-mode emulation. It installs this project there as the installer does (Debian's Python, a
# venv, pip: the aarch64 wheels, pyalsaaudio built against libasound2-dev, and the Raspberry Pi 5's
# GPIO backend, lgpio, built from source where it has no wheel), then checks that the wake word
# scores as pyopen-wakeword does and that both echo cancellers cancel as on x86-64.
# Emulation is 30-60 times slower than the CPU: 35-45 minutes in all, and no timing is measured.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sudo scripts/check-arm64.sh [--suite bookworm|trixie] [--root DIR] [-- PYTEST-ARGS...]

  --suite NAME   Debian release of the arm64 root (default bookworm; trixie has Python 3.13)
  --root DIR     where the arm64 root is built and kept (default /var/tmp/realtime-speaker-arm64-SUITE);
                 a root already there is reused, and this clone's files are copied in again
  PYTEST-ARGS    what pytest runs there instead of the default offline tests
EOF
}

SUITE=bookworm
ROOT=""
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITE="${2:?--suite needs a name}"; shift 2 ;;
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PYTEST_ARGS=("$@"); break ;;
        *) echo "check-arm64.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$SUITE" in bookworm|trixie) ;; *) echo "check-arm64.sh: --suite is bookworm or trixie, not '$SUITE'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "check-arm64.sh: run it as root (it builds a root with debootstrap and chroots into it)" >&2; exit 1; }
ROOT="${ROOT:-/var/tmp/realtime-speaker-arm64-$SUITE}"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
if [ ${#PYTEST_ARGS[@]} -eq 0 ]; then
    # No test here needs a broker, a sound server or audio paced in real time.
    PYTEST_ARGS=(tests/test_wakeword.py -k "not alsa" tests/test_linear_echo.py
        "tests/test_double_talk.py::test_with_nobody_talking_the_session_hears_no_more_echo_than_aec3_alone"
        "tests/test_double_talk.py::test_a_person_talking_over_a_reply_reaches_the_session_whole[0]")
fi

say() { echo "check-arm64.sh: $*"; }

if [ "$(uname -m)" != aarch64 ]; then
    if ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ]; then
        say "installing debootstrap and QEMU's user-mode emulation"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap qemu-user-static binfmt-support >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
fi
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null

if [ ! -x "$ROOT/usr/bin/python3" ]; then
    say "building a Debian $SUITE arm64 root in $ROOT (about 10 minutes)"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-dev,gcc,libc6-dev,libasound2-dev,libasound2-plugins,alsa-utils,espeak-ng,sox,swig,ca-certificates \
        "$SUITE" "$ROOT" http://deb.debian.org/debian >/dev/null
fi

MOUNTED=()
cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || true; done
}
trap cleanup EXIT
for fs in proc sys dev; do
    mountpoint -q "$ROOT/$fs" || { mount --bind "/$fs" "$ROOT/$fs"; MOUNTED+=("$ROOT/$fs"); }
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's trust store: pip there reaches PyPI the way this machine does.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"

say "copying this clone's files (as git lists them) to $ROOT/src"
rm -rf "$ROOT/src" && mkdir "$ROOT/src"
(cd "$SRC" && git ls-files -z | tar --null -T - -c) | tar -x -C "$ROOT/src"

in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}
say "installing realtime-speaker in a venv there (about 5 minutes)"
in_root sh -c 'test -x /opt/venv/bin/python || python3 -m venv /opt/venv'
[ -x "$ROOT/usr/bin/swig" ] || in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swig sox >/dev/null'
# With the Raspberry Pi 5's extra, built as the installer builds it on a Pi 5.
in_root sh -c 'cd /src && pip install -q --upgrade pip && PYPI=1 pip install -q ".[test,pi5]"'
in_root sh -c 'uname -m; python -c "import sys, lgpio; print(\"Python\", sys.version.split()[0], \"and lgpio\", hex(lgpio.LGPIO_PY_VERSION))"
    speaker --help >/dev/null && echo "speaker runs"'

say "running pytest there: ${PYTEST_ARGS[*]}"
in_root sh -c 'cd /src && exec python -m pytest -q -s -p no:cacheprovider --timeout 1800 "$@"' pytest "${PYTEST_ARGS[@]}"
