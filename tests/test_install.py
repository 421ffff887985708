"""systemd/install.sh against a scratch root (--destdir): every file it lays down, idempotence,
upgrade without a model, uninstall, purge, a bad bundle refused, the Edge TPU drop-in.

The venv is created for real (python -m venv), but with --skip-pip: a real pip install needs
PyPI (or piwheels) and tests need no network. The script then imports the project from this
checkout with --python to verify the bundle and write the config, and prints the exact pip
command it would run, which is checked here (no extras: the device profile only).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from test_systemd import exposure, needs_analyze, verify

from device.bundle import load_bundle
from device.config import load_config, validate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "systemd" / "install.sh"
UNIT = "etc/systemd/system/callwatch.service"
DROP_IN = "etc/systemd/system/callwatch.service.d/edgetpu.conf"


def run_install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--destdir", str(root), "--skip-pip", "--python", sys.executable,
         *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def files_outside_venv(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of every file laid down, the venv apart."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in sorted(root.rglob("*"))
            if p.is_file() and "opt/callwatch/venv" not in str(p.relative_to(root))}


@pytest.fixture
def bundle(tone_bundle: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(tone_bundle.parent, folder)
    return folder / "model.tflite"


def test_install_lays_down_every_file(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    result = run_install(root, str(bundle))
    assert files_outside_venv(root) == {
        "etc/callwatch/config.yaml": 0o644,
        "etc/callwatch/mqtt_password": 0o600,
        UNIT: 0o644,
        "opt/callwatch/model/model.json": 0o644,
        "opt/callwatch/model/model.tflite": 0o644,
    }
    # The unit is the repository's, unchanged for the default prefix.
    assert (root / UNIT).read_text() == (REPO / "systemd/callwatch.service").read_text()
    # The model is the bundle, byte for byte, and verifies where it now lives.
    for name in ("model.json", "model.tflite"):
        installed = root / "opt/callwatch/model" / name
        assert installed.read_bytes() == (bundle.parent / name).read_bytes()
    assert load_bundle(root / "opt/callwatch/model").labels == ("tone",)
    # An empty credential: LoadCredential= refuses to start the unit if the file is missing.
    assert (root / "etc/callwatch/mqtt_password").read_bytes() == b""
    # The config: every default, except where the model is and that MQTT is on; commented.
    text = (root / "etc/callwatch/config.yaml").read_text()
    cfg = load_config(root / "etc/callwatch/config.yaml")
    expected = validate({"detection": {"model": "/opt/callwatch/model"}, "mqtt": {"enabled": True}})
    assert cfg.to_dict() == expected.to_dict()
    assert "  # Broker host name or address\n  host: localhost\n" in text
    # A real venv of the right Python; pip is only announced (device profile: no extras).
    venv = root / "opt/callwatch/venv"
    assert "version = 3.11" in (venv / "pyvenv.cfg").read_text()
    assert subprocess.run([venv / "bin/python", "-c", "import sys; print(sys.prefix)"],
                          capture_output=True, text=True, check=True).stdout.strip() == str(venv)
    assert (f"would run: /opt/callwatch/venv/bin/python -m pip install "
            f"--disable-pip-version-check --upgrade {REPO}\n") in result.stdout


def test_the_device_profile_does_not_pull_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]}
    assert names.isdisjoint({"tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "matplotlib"})
    assert "ai-edge-litert" in names


def test_install_twice_upgrade_uninstall_purge(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    run_install(root, str(bundle))
    first = files_outside_venv(root)
    # The user edits the config and sets a password: a re-install keeps both.
    config = root / "etc/callwatch/config.yaml"
    config.write_text(config.read_text().replace("host: localhost", "host: broker.lan"))
    (root / "etc/callwatch/mqtt_password").write_text("s3cret\n")
    edited = config.read_text()
    again = run_install(root, str(bundle))
    assert "kept the existing /etc/callwatch/config.yaml" in again.stdout
    assert files_outside_venv(root) == first
    assert config.read_text() == edited
    assert (root / "etc/callwatch/mqtt_password").read_text() == "s3cret\n"
    # An upgrade without a model keeps the installed one.
    run_install(root)
    assert load_bundle(root / "opt/callwatch/model").labels == ("tone",)
    assert files_outside_venv(root) == first

    run_install(root, "--uninstall")
    assert not (root / "opt/callwatch").exists()
    assert files_outside_venv(root) == {"etc/callwatch/config.yaml": 0o644,
                                        "etc/callwatch/mqtt_password": 0o600}
    (root / "var/lib/private/callwatch").mkdir(parents=True)  # what the service leaves
    (root / "var/lib/private/callwatch/outbox.sqlite").write_bytes(b"x")
    run_install(root, "--uninstall", "--purge")
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert not (root / "etc/callwatch").exists()


def test_a_damaged_bundle_is_refused_and_the_installed_model_kept(tmp_path: Path,
                                                                  bundle: Path) -> None:
    root = tmp_path / "root"
    run_install(root, str(bundle))
    installed = (root / "opt/callwatch/model/model.tflite").read_bytes()
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"\0")
    result = run_install(root, str(bundle), check=False)
    assert result.returncode == 2
    assert "sha256" in result.stderr and "model.tflite" in result.stderr
    assert (root / "opt/callwatch/model/model.tflite").read_bytes() == installed
    assert not (root / "opt/callwatch/model.new").exists()


def test_usage_errors_exit_2(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    no_model = run_install(root, check=False)
    assert no_model.returncode == 2 and "no model installed yet" in no_model.stderr
    missing = run_install(root, str(tmp_path / "nope.tflite"), check=False)
    assert missing.returncode == 2 and "nope.tflite: no such model" in missing.stderr
    assert run_install(root, "--frobnicate", check=False).returncode == 2
    assert run_install(root, "--prefix", "relative", str(bundle), check=False).returncode == 2


def test_an_invalid_existing_config_stops_the_install(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    run_install(root, str(bundle))
    (root / "etc/callwatch/config.yaml").write_text("mqtt:\n  port: 0\n")
    result = run_install(root, str(bundle), check=False)
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr and len(result.stderr.splitlines()) == 1


def test_another_prefix_is_written_into_unit_and_config(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    run_install(root, "--prefix", "/srv/callwatch", str(bundle))
    unit = (root / UNIT).read_text()
    assert ("ExecStart=/srv/callwatch/venv/bin/python -m device "
            "--config /etc/callwatch/config.yaml") in unit
    assert "/opt/callwatch" not in unit
    assert load_config(root / "etc/callwatch/config.yaml").detection.model == "/srv/callwatch/model"
    assert load_bundle(root / "srv/callwatch/model").labels == ("tone",)


@needs_analyze
def test_edgetpu_drop_in_verifies_and_stays_hardened(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    run_install(root, "--edgetpu", str(bundle))
    drop_in = (root / DROP_IN).read_text()
    assert "DeviceAllow=char-usb_device rw" in drop_in and "SupplementaryGroups=plugdev" in drop_in
    # verify resolves ExecStart on the real root: point it at the venv the script made.
    units = tmp_path / "units"
    units.mkdir()
    venv_python = root / "opt/callwatch/venv/bin/python"
    (units / "callwatch.service").write_text(
        (root / UNIT).read_text().replace("/opt/callwatch/venv/bin/python", str(venv_python)))
    shutil.copytree((root / DROP_IN).parent, units / "callwatch.service.d")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    result = verify("callwatch.service", env=env)
    assert result.stderr == "" and result.returncode == 0, result.stderr
    # security reads the installed files themselves from the scratch root.
    assert exposure("--root", str(root), "callwatch.service") <= 2.5


def test_a_tls_client_key_reaches_the_service_as_a_credential(tmp_path: Path, bundle: Path) -> None:
    """The service runs as a DynamicUser that cannot read a root-only key: when
    /etc/callwatch/mqtt_client.key exists, install.sh keeps it 0600 and adds a drop-in that
    hands it to the service with LoadCredential=; without the key the drop-in goes away."""
    root = tmp_path / "root"
    (root / "etc/callwatch").mkdir(parents=True)
    key = root / "etc/callwatch/mqtt_client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    result = run_install(root, str(bundle))
    dropin = root / "etc/systemd/system/callwatch.service.d/tls-key.conf"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = dropin.read_text()
    assert "LoadCredential=mqtt_client_key:/etc/callwatch/mqtt_client.key" in text
    assert "/run/credentials/callwatch.service/mqtt_client_key" in result.stdout + result.stderr
    key.unlink()
    run_install(root)
    assert not dropin.exists()
