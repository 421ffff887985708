"""config.yaml and its schema: the shipped file, comments on every key, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from device.config import SCHEMA, ConfigError, Key, load_config, resolved_yaml, validate

REPO = Path(__file__).resolve().parents[1]
CONFIG_YAML = REPO / "config.yaml"


def schema_paths(schema: dict = SCHEMA, prefix: str = "") -> tuple[set[str], set[str]]:
    """(dotted paths of settings, dotted paths of sections) in the schema."""
    leaves, sections = set(), set()
    for name, spec in schema.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(spec, dict):
            sections.add(path)
            sub_leaves, sub_sections = schema_paths(spec, path)
            leaves |= sub_leaves
            sections |= sub_sections
        else:
            assert isinstance(spec, Key)
            leaves.add(path)
    return leaves, sections


def keys_in_yaml_text(text: str, leaves: set[str]) -> dict[str, int]:
    """Dotted key path -> line index, from the indentation of the text itself.

    Lines nested under a setting (the entries of train.datasets, say) belong to its value and
    are not schema keys; they are skipped.
    """
    found: dict[str, int] = {}
    stack: list[tuple[int, str]] = []  # (indent, path) of the enclosing keys
    for number, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        if parent in leaves:
            continue
        path = f"{parent}.{name}" if parent else name
        stack.append((indent, path))
        found[path] = number
    return found


# --- the shipped config.yaml ----------------------------------------------------------------


def test_shipped_config_loads():
    cfg = load_config(CONFIG_YAML)
    assert cfg.mqtt.port == 1883
    assert cfg.train.features.n_mels == 40


def config_text_problems(text: str) -> dict[str, list[str]]:
    """Schema keys missing from a config text, keys not in the schema, keys without a comment."""
    lines = text.splitlines()
    leaves, sections = schema_paths()
    found = keys_in_yaml_text(text, leaves)

    def commented(path: str) -> bool:
        above = lines[found[path] - 1].strip() if found[path] > 0 else ""
        return above.startswith("#") and above.strip("# ") != ""

    return {
        "missing": sorted((leaves | sections) - set(found)),
        "unknown": sorted(set(found) - leaves - sections),
        "uncommented": sorted(p for p in leaves if p in found and not commented(p)),
    }


def test_every_schema_key_is_in_config_yaml_with_a_comment_above_it():
    assert config_text_problems(CONFIG_YAML.read_text()) == {
        "missing": [], "unknown": [], "uncommented": []
    }


def test_the_config_yaml_check_notices_what_it_should():
    lines = CONFIG_YAML.read_text().splitlines()
    found = keys_in_yaml_text("\n".join(lines), schema_paths()[0])
    port, hop = found["mqtt.port"], found["detection.hop_s"]
    lines[port - 1] = "  colour: red"  # the comment above mqtt.port becomes an unknown key
    del lines[hop]  # and detection.hop_s disappears
    assert config_text_problems("\n".join(lines)) == {
        "missing": ["detection.hop_s"], "unknown": ["mqtt.colour"], "uncommented": ["mqtt.port"]
    }


def test_every_setting_has_a_doc_and_no_secret_lives_in_the_schema():
    leaves, _ = schema_paths()
    for path in leaves:
        spec = _lookup(path)
        assert spec.doc.strip(), f"{path} has no doc string"
        # Passwords come from a file or a systemd credential, never from config.yaml.
        assert not re.search(r"(password|secret|token)$", path), path


def _lookup(path: str):
    node = SCHEMA
    for part in path.split("."):
        node = node[part]
    return node


def test_defaults_validate_and_resolved_yaml_round_trips():
    cfg = validate({})
    again = validate(yaml.safe_load(resolved_yaml(cfg)))
    assert again.to_dict() == cfg.to_dict()
    assert cfg.mqtt.tls.enabled is False
    with pytest.raises(AttributeError, match="mqtt.prot"):
        cfg.mqtt.prot  # noqa: B018


def test_no_config_file_means_defaults(tmp_path, monkeypatch):
    if Path("/etc/callwatch/config.yaml").exists():
        pytest.skip("/etc/callwatch/config.yaml exists on this machine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALLWATCH_CONFIG", raising=False)
    assert load_config().to_dict() == validate({}).to_dict()
    (tmp_path / "mine.yaml").write_text("mqtt:\n  port: 1884\n")
    monkeypatch.setenv("CALLWATCH_CONFIG", str(tmp_path / "mine.yaml"))
    assert load_config().mqtt.port == 1884


# --- one line naming the key path -----------------------------------------------------------

BAD_CONFIGS = [
    # unknown keys
    ("mqtt:\n  portt: 1883\n", "mqtt.portt: unknown key (known here: enabled, host, port"),
    ("colour: red\n", "colour: unknown key"),
    ("train:\n  datasets: [{path: x, kindd: clips}]\n", "train.datasets[0].kindd: unknown"),
    # wrong types
    ("mqtt:\n  port: '1883'\n", "mqtt.port: must be an integer, got '1883'"),
    ("mqtt:\n  port: yes\n", "mqtt.port: must be an integer, got True"),
    ("mqtt:\n  port: 1883.5\n", "mqtt.port: must be an integer, got 1883.5"),
    ("detection:\n  hop_s: fast\n", "detection.hop_s: must be a number, got 'fast'"),
    ("detection:\n  hop_s: .nan\n", "detection.hop_s: must be a finite number, got nan"),
    ("outputs:\n  clips:\n    max_mb: .inf\n", "outputs.clips.max_mb: must be a finite number, got inf"),
    ("mqtt:\n  reconnect_s: [1, .inf]\n", "mqtt.reconnect_s[1]: must be a finite number, got inf"),
    ("service:\n  device_id: 'pi/+'\n", "service.device_id: must not contain '+'"),
    ("service:\n  device_id: 'a/b'\n", "service.device_id: must not contain '/'"),
    ("service:\n  device_id: \"x\\u0007\"\n", "service.device_id: must not contain '\\x07'"),
    ("service:\n  device_id: " + "x" * 65 + "\n", "service.device_id: at most 64 characters"),
    ("mqtt:\n  topic_prefix: 'farm/#'\n", "mqtt.topic_prefix: must not contain '#'"),
    ("mqtt:\n  topic_prefix: 'farm//x'\n", "mqtt.topic_prefix: no empty topic levels"),
    ("audio:\n  silence_timeout_s: 1\n", "audio.silence_timeout_s: must be 0 (off) or at least"),
    ("train:\n  labels: [1]\n", "train.labels[0]: must be a string, got 1"),
    ("mqtt:\n  enabled: 'no'\n", "mqtt.enabled: must be true/false, got 'no'"),
    ("mqtt: 5\n", "mqtt: must be a mapping, got 5"),
    ("train:\n  datasets: [5]\n", "train.datasets[0]: must be a mapping, got 5"),
    ("- a\n- b\n", "top level: must be a mapping of sections, got list"),
    # out of range
    ("mqtt:\n  port: 70000\n", "mqtt.port: must be 1..65535, got 70000"),
    ("detection:\n  hop_s: 0.001\n", "detection.hop_s: must be 0.02..60, got 0.001"),
    ("detection:\n  delegate: gpu\n", "detection.delegate: must be one of cpu, edgetpu, got 'gpu'"),
    ("mqtt:\n  host: ''\n", "mqtt.host: must not be empty"),
    # rules across keys
    ("detection:\n  confirm_k: 3\n", "detection.confirm_k: must be <= confirm_n (1), got 3"),
    ("mqtt:\n  password_file: /run/pw\n", "mqtt.username: required when mqtt.password_file is set"),
    ("mqtt:\n  tls: {cert_file: c.pem}\n", "mqtt.tls.key_file: required when mqtt.tls.cert_file"),
    ("train:\n  split: {validation: 0.5, test: 0.5}\n", "train.split: validation + test must be"),
    ("train:\n  split: {folds: 1}\n", "train.split.folds: must be 0 (off) or at least 2"),
    ("train:\n  split: {folds: 5, leave_one_group_out: true}\n", "train.split.folds: set either folds or"),
    ("train:\n  features:\n    fmax: 9000.0\n", "train.features: fmin/fmax: need 0 <= fmin < fmax"),
    ("train:\n  features:\n    n_fft: 500\n", "train.features: n_fft: must be a power of two"),
    ("audio:\n  reopen_backoff_s: [60, 1]\n", "audio.reopen_backoff_s: must be [first, longest]"),
    ("detection:\n  thresholds: {call: 1.5}\n", "detection.thresholds.call: must be between 0 and"),
    ("train:\n  labels: [call]\n  datasets:\n    - path: x\n      classes: {song: bird}\n",
     "train.datasets[0].classes.song: must be one of train.labels ['call'] or 'negative', got"),
]


@pytest.mark.parametrize(
    ("text", "message"),
    BAD_CONFIGS,
    ids=[f"{i}-{message.split(':')[0]}" for i, (_, message) in enumerate(BAD_CONFIGS)],
)
def test_bad_config_gives_one_line_with_the_key_path(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {message}"), str(exc.value)
    assert "\n" not in str(exc.value)


def test_unreadable_files_give_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config \(No such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)  # a folder
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(tmp_path / "binary.yaml")
    (tmp_path / "broken.yaml").write_text("mqtt:\n  port: [1883\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+: "):
        load_config(tmp_path / "broken.yaml")


# --- python -m device --check-config --------------------------------------------------------


def check_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "device", "--check-config", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("out_of_range.yaml", "mqtt:\n  port: 70000\n", "mqtt.port: must be 1..65535, got 70000"),
        ("unknown.yaml", "detection:\n  hopp_s: 1\n", "detection.hopp_s: unknown key"),
        ("invalid.yaml", "mqtt: {port: 1883\n", "line "),
        ("binary.yaml", b"\x00\xff\xfe", "not a text file"),
        ("missing.yaml", None, "cannot read config"),
    ],
)
def test_check_config_cli_prints_one_line_and_exits_2(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = check_config("--config", str(path))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and expected in lines[0], lines[0]


def test_check_config_cli_accepts_the_shipped_config():
    result = check_config("--config", str(CONFIG_YAML))
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
