"""The one-command install (scripts/install.sh) into a temporary root, and the systemd units.

The installer runs for real (venv, pip, config, unit), only under ``--prefix`` and without
systemctl; pip installs this checkout into a venv that sees the already installed dependencies
(``--system-site-packages --pip-args=--no-deps``), so no dependency is downloaded.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install.sh"
UNITS = ROOT / "systemd"

# An existing system user and group stand in for `speaker` (a test root has no user database of
# its own; systemd-analyze warns about `nobody`).
USER, GROUP = "daemon", "daemon"


def _install(prefix: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(INSTALL), "--prefix", str(prefix), "--no-systemd", "--no-apt", "--user", USER, "--group", GROUP,
           "--system-site-packages", "--pip-args=--no-deps", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _owner(path: Path) -> tuple[str, str]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


def _exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("getent") is None, reason="the installer runs as root")
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)")


@needs_analyze
@pytest.mark.timeout(60)
def test_units_exposure() -> None:
    tokens = _exposure(UNITS / "speaker-tokens.service")
    speaker = _exposure(UNITS / "speaker.service")
    print(f"exposure: speaker-tokens.service {tokens}, speaker.service {speaker}")
    assert tokens <= 2.5
    # The speaker needs the sound card, GPIO, SPI and the network: 1.6 today, every point left is
    # explained in the unit. A change that raises it must say why there too.
    assert speaker <= 2.0


@needs_root
@pytest.mark.timeout(180)
def test_install_upgrade_uninstall_purge(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    venv = prefix / "opt/realtime-speaker/venv"
    conf_dir, conf = prefix / "etc/speaker", prefix / "etc/speaker/speaker.toml"
    unit = prefix / "etc/systemd/system/speaker.service"
    state = prefix / "var/lib/realtime-speaker"

    first = _install(prefix)
    # Files, modes, owners.
    assert (venv / "bin/speaker").is_file() and os.access(venv / "bin/speaker", os.X_OK)
    link = prefix / "usr/local/bin/speaker"
    assert link.is_symlink() and link.resolve() == (venv / "bin/speaker").resolve()
    assert _mode(conf_dir) == 0o750 and _owner(conf_dir) == ("root", GROUP)
    assert _mode(conf) == 0o640 and _owner(conf) == ("root", GROUP)
    assert conf.read_text() == (ROOT / "config/speaker.toml").read_text()
    assert _mode(unit) == 0o644
    text = unit.read_text()
    assert f"ExecStart={venv}/bin/speaker run --config {conf}" in text
    assert f"User={USER}" in text and f"Group={GROUP}" in text
    groups = next(line for line in text.splitlines() if line.startswith("SupplementaryGroups="))
    for g in groups.split("=", 1)[1].split():
        grp.getgrnam(g)  # only groups this machine has, or systemd would refuse to start it
    for g in ("gpio", "spi"):
        try:
            grp.getgrnam(g)
        except KeyError:
            assert f"group '{g}' does not exist" in first.stdout + first.stderr
    assert _mode(state) == 0o750 and _owner(state) == (USER, GROUP)
    # The installed command is this checkout and runs.
    version = subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "speaker" in version.stdout
    # `speaker check` ran and its verdict was shown, then what to edit.
    assert "speaker check --config" in first.stdout and "config:" in first.stdout
    assert "[auth]  token_url" in first.stdout

    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # A person edits the config, adds a secret, the daemon saved state; then an upgrade.
    conf.write_text(conf.read_text() + "\n# edited by hand\n")
    conf.chmod(0o644)  # a mistake the upgrade corrects
    secret = conf_dir / "device.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    (state / "state.json").write_text('{"muted": true, "volume": 30}\n')
    unit_before = unit.read_text()
    second = _install(prefix, "--no-check")
    assert "upgrading speaker" in second.stdout and f"keeping {conf}" in second.stdout
    assert conf.read_text().endswith("# edited by hand\n")
    assert _mode(conf) == 0o640 and _owner(conf) == ("root", GROUP)
    assert secret.read_text() == "s3cret\n" and _mode(secret) == 0o640
    assert (state / "state.json").read_text() == '{"muted": true, "volume": 30}\n'
    assert unit.read_text() == unit_before  # idempotent
    assert (venv / "bin/speaker").is_file()

    # The token service beside it, in the same venv.
    _install(prefix, "--tokens", "--no-check")
    tconf = prefix / "etc/speaker-tokens/tokens.toml"
    key = prefix / "etc/speaker-tokens/openai.key"
    tunit = prefix / "etc/systemd/system/speaker-tokens.service"
    assert _mode(tconf) == 0o640 and _owner(tconf) == ("root", GROUP)
    assert _mode(key) == 0o600 and _owner(key) == (USER, GROUP)
    assert f"ExecStart={venv}/bin/speaker-tokens --config {tconf}" in tunit.read_text()
    assert (prefix / "usr/local/bin/speaker-tokens").is_symlink()

    # Uninstall the speaker: unit and command gone, config and state kept, the shared venv stays.
    out = _install(prefix, "--uninstall").stdout
    assert not unit.exists() and not link.is_symlink()
    assert conf.exists() and secret.exists() and (state / "state.json").exists()
    assert (venv / "bin/speaker-tokens").exists() and "stays" in out
    # Purge the token service: the venv goes with the last service, its config too.
    _install(prefix, "--tokens", "--uninstall", "--purge")
    assert not tunit.exists() and not tconf.parent.exists() and not venv.exists()
    assert conf.exists()  # the speaker's config is not the token service's to remove
    # Purge the speaker: config and state gone.
    _install(prefix, "--uninstall", "--purge")
    assert not conf_dir.exists() and not state.exists()


@needs_root
@pytest.mark.timeout(60)
def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", str(prefix), "--no-gpio"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(p.is_file() for p in prefix.rglob("*"))  # nothing written
    lines = result.stdout.splitlines()
    assert any(line.startswith("+ ") and "apt-get install" in line and "libasound2-dev" in line for line in lines)
    assert any(line.startswith("+ ") and "pip install" in line for line in lines)
    assert any(line.startswith("+ ") and "systemctl enable speaker.service" in line for line in lines)
    # The check runs with the daemon stopped (a card that cannot be opened twice would refuse the
    # check's probe while it runs), and the daemon starts after it.
    at = {what: next(k for k, line in enumerate(lines) if what in line)
          for what in ("+ systemctl stop speaker.service", "speaker check --config", "+ systemctl restart speaker.service")}
    assert list(at.values()) == sorted(at.values()), lines
    bad = subprocess.run(["bash", str(INSTALL), "--purge"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--purge only goes with --uninstall" in bad.stderr


@needs_root
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("model", "args", "pi5"), [
    ("Raspberry Pi 5 Model B Rev 1.0", (), True),
    ("Raspberry Pi 4 Model B Rev 1.5", (), False),
    ("Raspberry Pi 5 Model B Rev 1.0", ("--no-gpio",), False),
])
def test_on_a_pi_5_the_gpio_backend_is_installed_where_it_has_no_wheel(tmp_path: Path, model: str, args: tuple[str, ...],
                                                                        pi5: bool) -> None:
    # lgpio has no wheel for Python 3.13 (Raspberry Pi OS trixie): pip builds it, which needs swig,
    # and links it statically (PYPI=1), as Debian has no liblgpio. Without both the install fails.
    model_file = tmp_path / "model"
    model_file.write_bytes(model.encode() + b"\0")  # as /proc/device-tree/model reads
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", str(tmp_path / "root"), *args],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "SPEAKER_MODEL_FILE": str(model_file)})
    assert result.returncode == 0, result.stdout + result.stderr
    apt = next(line for line in result.stdout.splitlines() if line.startswith("+ ") and "apt-get install" in line)
    pip = next(line for line in result.stdout.splitlines() if line.startswith("+ ") and "pip install" in line)
    assert ("swig" in apt.split()) == pi5, apt
    assert ("PYPI=1" in pip.split() and pip.endswith("[pi5]")) == pi5, pip


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (Debian: shellcheck)")
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.sh")))
def test_scripts_pass_shellcheck(script: str) -> None:
    result = subprocess.run(["shellcheck", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
