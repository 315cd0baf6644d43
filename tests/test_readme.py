"""The README's promises: its config examples are valid, and it starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from router.config import settings_from_dict

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.DOTALL)


def test_readme_has_config_examples() -> None:
    assert len(YAML_BLOCKS) >= 2


@pytest.mark.parametrize("block", YAML_BLOCKS)
def test_every_config_example_in_the_readme_is_valid(block: str) -> None:
    settings_from_dict(yaml.safe_load(block), {})


def test_readme_starts_with_the_serve_and_test_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["./dev serve", "./dev test"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "./dev test" in ci
