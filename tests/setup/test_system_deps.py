"""scripts/system-deps, run for real with dpkg-query/apt-get/sudo/id shims on PATH: as root it calls
apt-get itself, as a normal user through sudo, and it installs only what is missing."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "system-deps"


def _shim(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def shims(tmp_path):
    """A PATH whose dpkg-query, apt-get, sudo and id are recorders; `installed` lists what dpkg knows."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _shim(bin_dir, "dpkg-query", 'grep -qx "${@: -1}" "$SHIM_INSTALLED" && printf installed || printf not-installed\n')
    _shim(bin_dir, "apt-get", 'echo "apt-get uid=$(id -u) frontend=${DEBIAN_FRONTEND:-} $*" >> "$SHIM_LOG"\n')
    _shim(bin_dir, "sudo", 'echo "sudo $*" >> "$SHIM_LOG"; SHIM_UID=0 exec "$@"\n')
    _shim(bin_dir, "id", '[[ "$1" == -u ]] && echo "$SHIM_UID" || /usr/bin/id "$@"\n')
    installed = tmp_path / "installed.txt"
    installed.write_text("")

    def run(uid: int, have: list[str] = (), with_sudo: bool = True):
        installed.write_text("".join(p + "\n" for p in have))
        if not with_sudo:
            (bin_dir / "sudo").unlink(missing_ok=True)
        log.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SHIM_LOG": str(log), "SHIM_UID": str(uid),
               "SHIM_INSTALLED": str(installed), "HOME": str(tmp_path)}
        r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        return r, log.read_text().splitlines()

    return run


def test_as_root_runs_apt_get_itself_noninteractively(shims):
    r, calls = shims(uid=0)
    assert r.returncode == 0, r.stderr
    assert not any(c.startswith("sudo") for c in calls)
    assert calls == ["apt-get uid=0 frontend=noninteractive update -qq",
                     "apt-get uid=0 frontend=noninteractive install -y -qq chromium chromium-driver"]


def test_as_a_normal_user_goes_through_sudo(shims):
    r, calls = shims(uid=1000)
    assert r.returncode == 0, r.stderr
    assert calls == ["sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                     "apt-get uid=0 frontend=noninteractive update -qq",
                     "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver",
                     "apt-get uid=0 frontend=noninteractive install -y -qq chromium chromium-driver"]


def test_installs_only_what_is_missing_and_nothing_when_all_are_there(shims):
    r, calls = shims(uid=0, have=["chromium"])
    assert r.returncode == 0 and calls[-1].endswith("install -y -qq chromium-driver")
    r, calls = shims(uid=1000, have=["chromium", "chromium-driver"])
    assert r.returncode == 0 and calls == []


def test_a_normal_user_without_sudo_gets_a_clear_error(shims):
    r, calls = shims(uid=1000, with_sudo=False)
    assert r.returncode == 1 and calls == []
    assert "need root or sudo to install: chromium chromium-driver" in r.stderr
