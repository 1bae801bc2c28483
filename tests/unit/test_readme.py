from pathlib import Path

from gateway.config_reference import reference

ROOT = Path(__file__).resolve().parents[2]


def test_readme_embeds_the_current_config_reference() -> None:
    assert reference() in (ROOT / "README.md").read_text(), "regenerate with: python -m gateway.config_reference"


def test_readme_quick_start_is_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
