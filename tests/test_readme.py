"""The README's configuration reference names every key of the schema (docs stay in sync)."""

from pathlib import Path

from device.config import schema_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_lists_every_schema_key():
    text = README.read_text()
    rows = [line for line in schema_reference().splitlines()[2:]]
    missing = [row.split("`")[1] for row in rows if f"| `{row.split('`')[1]}` |" not in text]
    assert not missing, (
        f"README.md lacks config keys {missing}; paste device.config.schema_reference() output"
    )


def test_readme_quick_start_commands_exist():
    text = README.read_text()
    for script in ("scripts/demo", "scripts/test"):
        assert f"bash {script}" in text
        assert (README.parent / script).is_file()
