"""The README's configuration reference names every key of the schema (docs stay in sync)."""

import re
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


def test_readme_layout_names_files_that_exist():
    """The layout section's table says where each stage lives: every file it names exists."""
    text = README.read_text()
    section = text.split("### Layout: where each stage lives", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:device|train|convert)/[\w/]+\.py)`", section))
    assert len(named) >= 20, named
    missing = sorted(name for name in named if not (README.parent / name).is_file())
    assert not missing, f"README.md's layout names files that do not exist: {missing}"
