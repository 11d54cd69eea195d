"""The tenant-file examples in the plugins' READMEs load: every ```yaml block of
plugins/*/README.md goes through ``load_tenant`` with the installed plugins, so the docs cannot rot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cxbridge.config import load_tenant
from cxbridge.plugins import PluginManager
from cxbridge.signing import generate_secret

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
READMES = {"salesforce": "salesforce", "zendesk": "zendesk", "generic_http": "http"}
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
ENV_REFERENCE = re.compile(r"\$\{(\w+)\}")


def _private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _env_for(text: str) -> dict[str, str]:
    """A value for every ``${VAR}`` the example names; secrets and keys in the form they must have."""
    special = {"ACME_SF_PRIVATE_KEY": _private_key}
    env = {}
    for name in ENV_REFERENCE.findall(text):
        if name in special:
            env[name] = special[name]()
        elif name.endswith("SECRET") and "HOOK" in name:
            env[name] = generate_secret()
        elif name.endswith("_URL"):
            env[name] = f"https://hooks.example.com/{name.lower()}"
        else:
            env[name] = f"example-{name.lower()}"
    return env


@pytest.mark.parametrize(("plugin", "destination_type"), READMES.items())
def test_readme_examples_load_as_tenant_files(
    plugin: str, destination_type: str, tmp_path: Path
) -> None:
    text = (PLUGINS / plugin / "README.md").read_text()
    blocks = YAML_BLOCK.findall(text)
    assert blocks, f"plugins/{plugin}/README.md has no ```yaml example"
    manager = PluginManager()
    manager.load_entrypoints()
    assert manager.failures == []
    for number, block in enumerate(blocks, start=1):
        path = tmp_path / f"{plugin}-{number}.yaml"
        path.write_text(block)
        tenant = load_tenant(path, manager.destination_types, _env_for(block))
        assert tenant.destinations, f"example {number} of plugins/{plugin}/README.md"
        assert {d.type for d in tenant.destinations.values()} == {destination_type}


@pytest.mark.parametrize(("score", "tags"), [(90, {"qa_pass"}), (97, {"qa_pass", "qa_gold"})])
def test_zendesk_readme_quality_mapping_keeps_the_pass_review_tags(
    score: int, tags: set[str], tmp_path: Path
) -> None:
    from tests.engine_support import make_event

    text = (PLUGINS / "zendesk" / "README.md").read_text()
    block = YAML_BLOCK.findall(text)[0]
    manager = PluginManager()
    manager.load_entrypoints()
    path = tmp_path / "zendesk.yaml"
    path.write_text(block)
    tenant = load_tenant(path, manager.destination_types, _env_for(block))
    payload = manager.hooks.transform(
        make_event("quality_score", score=score), tenant.destinations["helpdesk"]
    )
    assert payload is not None
    plan = json.loads(payload.body)
    assert set(plan["add_tags"]) == tags, plan
