"""cluster.yaml against the JSON schema that the installed Ray ships (offline), plus the project's rules."""

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _schema():
    import json

    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_valid_against_rays_schema(config):
    jsonschema.validate(config, _schema())  # raises jsonschema.ValidationError on a typo


@pytest.mark.parametrize("typo", [{"max_wokers": 3}, {"head_node_type": 5}, {"provider": {"region": "x"}}])
def test_schema_catches_a_typo(config, typo):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, **typo}, _schema())


def test_project_rules(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # the head (drivers) is never spot
    gpu_types = {n for n, t in nodes.items() if re.match(r"^(g|p)\d", t["node_config"]["InstanceType"])}
    assert len(gpu_types) >= 2
    setup = "\n".join(config["setup_commands"])
    assert "requirements.txt" in setup
    pinned = re.search(r"ray\[[^\]]*\]==([\d.]+)", (ROOT / "requirements.txt").read_text()).group(1)
    import ray

    assert pinned == ray.__version__  # the nodes install what the client runs
    text = (ROOT / "cluster.yaml").read_text().lower()
    for secret in ("aws_access_key", "aws_secret", "password", "token:"):
        assert secret not in text
    assert "/mnt/efs" in "\n".join(config["initialization_commands"])
