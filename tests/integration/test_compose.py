"""docker-compose.yml is valid and its services run the commands the README gives for running without Docker."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SERVICES = {"redis", "postgres", "orchestrator", "activities", "beat", "flower", "web", "dashboard"}


def test_compose_parses_and_has_every_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == EXPECTED_SERVICES
    for name, service in compose["services"].items():
        assert "command" in service or "image" in service, name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_commands_match_the_readme():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    readme_lines = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()]
    for name in EXPECTED_SERVICES - {"redis", "postgres"}:
        command = compose["services"][name]["command"]
        assert any(line.endswith(command) for line in readme_lines), f"README lacks the command of {name}: {command}"
