"""The Dockerfile and docker-compose.yml, checked as far as a machine without a container engine can.

Every command they give the image must be a `cnop` command with options it has; the image's
shape (stages, non-root user, health check, role by command) is read from the Dockerfile.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cnop.roles import ROLE_NAMES
from tests.support.cli_commands import check_cnop_command

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _instruction(name: str) -> list[str]:
    """The exec-form (JSON array) argument of the Dockerfile's last `name` instruction."""
    found = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)
    assert found, f"no {name} in the Dockerfile"
    return json.loads(found[-1])


def test_the_checker_refuses_what_cnop_does_not_have() -> None:
    assert check_cnop_command(["serve", "order", "--port", "8080"]) == "cnop serve order"
    assert check_cnop_command(["db", "init"]) == "cnop db init"
    for bad in (["serve", "billing"], ["serve", "order", "--colour", "red"], ["serve", "order", "--port", "x"], ["nope"]):
        with pytest.raises(AssertionError):
            check_cnop_command(bad)


def test_the_image_is_multi_stage_slim_non_root_and_leaves_build_tools_behind() -> None:
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["web-assets", "build", "runtime"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE, flags=re.MULTILINE)
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/cnop /opt/cnop" in runtime
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "npm"):
        assert tool not in runtime, tool
    assert re.search(r"^USER 10001", runtime, flags=re.MULTILINE)
    assert "HEALTHCHECK" in runtime
    assert "uninstall -y pip" in DOCKERFILE  # not even pip in the app's environment


def test_the_dockerfile_commands_are_cnop_commands() -> None:
    assert _instruction("ENTRYPOINT") == ["cnop"]
    assert check_cnop_command(_instruction("CMD")) == "cnop serve gateway"
    health = _instruction("HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 CMD")
    assert health[0] == "cnop"
    assert check_cnop_command(health[1:]) == "cnop probe"


def test_dockerignore_sends_only_the_build_inputs() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!requirements.lock", "!README.md", "!src/"} <= set(lines)


def test_compose_runs_the_whole_cloud_shape_with_two_gateways() -> None:
    services = _compose()["services"]
    assert {"dynamodb", "redis", "db-init", "keys", "user", "order", "inventory", "insights", "web", "worker"} <= set(
        services
    )
    roles = {}
    for name, service in services.items():
        if service.get("image") != "cnop:local":
            continue
        command = check_cnop_command(service["command"])
        if command.startswith("cnop serve "):
            roles.setdefault(command.removeprefix("cnop serve "), []).append(name)
    assert set(roles) == set(ROLE_NAMES)
    assert sorted(roles["gateway"]) == ["gateway-a", "gateway-b"]
    # Only the gateways are published, and only on the loopback interface.
    published = {name for name, s in services.items() if s.get("ports") and s.get("image") == "cnop:local"}
    assert published == {"gateway-a", "gateway-b"}
    for name in published:
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])


def test_in_compose_only_the_user_service_holds_the_signing_key() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if service.get("image") != "cnop:local" or name == "keys":
            continue
        env = service.get("environment", {})
        mounts = " ".join(service.get("volumes", []))
        signs = "CNOP_JWT_PRIVATE_KEY_FILE" in env or "keys-signing" in mounts
        assert signs == (name == "user"), name
        if check_cnop_command(service["command"]).startswith("cnop serve"):
            assert env["CNOP_JWT_ALGORITHM"] == "EdDSA", name
            assert env["CNOP_SHAPE"] == "cloud", name
    upstreams = services["gateway-a"]["environment"]["CNOP_UPSTREAM_URLS"]
    assert {pair.split("=")[0] for pair in upstreams.split(",")} == {"user", "order", "inventory", "insights", "web"}
