"""The Kubernetes manifests: every overlay renders, every object passes the Kubernetes JSON schemas
(strict: an unknown field is an error), and the shape is what the cloud shape needs.

The schemas ship inside `kubernetes-validate` (no network). Custom resources have no schema
there and are skipped by name, explicitly: `SKIPPED_CUSTOM_RESOURCES`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from cnop.roles import ROLE_NAMES
from tests.support.cli_commands import check_cnop_command

ROOT = Path(__file__).resolve().parents[3]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
# The oldest Kubernetes still commonly run (EKS standard support) and the newest bundled schemas.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SKIPPED_CUSTOM_RESOURCES = {("ServiceMonitor", "cnop")}
SERVICES = ("user", "order", "inventory", "insights")


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _renderer().render


def _objects(overlay: str) -> list[dict[str, Any]]:
    return render(OVERLAYS / overlay)


def _by(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod(o: dict[str, Any]) -> dict[str, Any]:
    spec = o["spec"]
    if o["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def test_both_overlays_exist() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == ["aws", "local"]


@pytest.mark.parametrize("overlay", ["local", "aws"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schemas(overlay: str, version: str) -> None:
    objects = _objects(overlay)
    skipped = set()
    for o in objects:
        identity = (o["kind"], o["metadata"]["name"])
        if identity in SKIPPED_CUSTOM_RESOURCES:
            skipped.add(identity)
            continue
        kubernetes_validate.validate(o, version, strict=True)
    assert skipped == (SKIPPED_CUSTOM_RESOURCES if overlay == "aws" else set())


def test_the_validation_would_catch_a_mistake() -> None:
    deployment = _by(_objects("local"), "Deployment")["order"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_a_deployment_and_service_per_role_with_probes_resources_and_no_root(overlay: str) -> None:
    objects = _objects(overlay)
    deployments, services = _by(objects, "Deployment"), _by(objects, "Service")
    roles = set(ROLE_NAMES)
    assert roles <= set(deployments)
    assert roles <= set(services)
    for name in roles:
        pod = _pod(deployments[name])
        [container] = pod["containers"]
        assert check_cnop_command(container["args"]) == f"cnop serve {name}"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert set(container["resources"]) == {"requests", "limits"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["serviceAccountName"] == "cnop"
        assert {"configMapRef": {"name": "cnop-config"}} in container["envFrom"]
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert deployments[name]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cnop"


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_only_the_user_service_mounts_the_signing_key_and_every_role_the_public_keys(overlay: str) -> None:
    for name, deployment in _by(_objects(overlay), "Deployment").items():
        if name not in ROLE_NAMES:
            continue
        pod = _pod(deployment)
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        assert "cnop-jwt-public" in secrets, name
        assert ("cnop-jwt-signing" in secrets) == (name == "user"), name
        assert ("CNOP_JWT_PRIVATE_KEY_FILE" in env) == (name == "user"), name
    secrets = _by(_objects(overlay), "Secret")
    expected = {"cnop-jwt-signing", "cnop-jwt-public"} | ({"cnop-redis"} if overlay == "aws" else set())
    assert set(secrets) == expected
    assert all("data" not in s and "stringData" not in s for s in secrets.values())  # never committed


REDIS_PASSWORD_FROM_SECRET = {
    "name": "CNOP_REDIS_PASSWORD",
    "valueFrom": {"secretKeyRef": {"name": "cnop-redis", "key": "password", "optional": True}},
}


def _redis_credentials_in_config_maps(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(ConfigMap, key) pairs that carry a Redis password: a password key, or a Redis URL with one."""
    found = []
    for o in objects:
        if o["kind"] != "ConfigMap":
            continue
        for key, value in o.get("data", {}).items():
            upper = key.upper()
            password_key = "REDIS" in upper and ("PASSWORD" in upper or "AUTH" in upper)
            url = str(value)
            url_with_password = url.startswith(("redis://", "rediss://")) and urlsplit(url).password is not None
            if password_key or url_with_password:
                found.append((o["metadata"]["name"], key))
    return found


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_redis_credentials_are_only_in_a_secret_and_every_workload_with_redis_reads_it(overlay: str) -> None:
    objects = _objects(overlay)
    assert _redis_credentials_in_config_maps(objects) == []
    configs = _by(objects, "ConfigMap")
    assert configs["cnop-config"]["data"]["CNOP_REDIS_URL"]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")]
    with_config = 0
    for o in workloads:
        for container in _pod(o)["containers"]:
            sources = container.get("envFrom", [])
            if {"configMapRef": {"name": "cnop-config"}} not in sources:
                continue  # Redis itself, DynamoDB Local: no CNOP_REDIS_URL, nothing to authenticate
            with_config += 1
            assert REDIS_PASSWORD_FROM_SECRET in container.get("env", []), o["metadata"]["name"]
            assert all("secretRef" not in s for s in sources)  # the password arrives by name, once
            assert all(e["name"] != "CNOP_REDIS_URL" for e in container.get("env", []))
    assert with_config == len(ROLE_NAMES) + 2  # every role, the db-init Job and the audit CronJob
    secrets = _by(objects, "Secret")
    if overlay == "aws":
        assert secrets["cnop-redis"]["type"] == "Opaque" and "data" not in secrets["cnop-redis"]
    else:
        assert "cnop-redis" not in secrets  # the local Redis has no password; the key is optional


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CNOP_REDIS_URL", "rediss://cnop:pw@CLUSTER.cache.amazonaws.com:6379/0"),
        ("CNOP_REDIS_URL", "redis://:pw@redis:6379/0"),
        ("CNOP_REDIS_PASSWORD", "pw"),
    ],
)
def test_the_credential_check_would_catch_a_password_in_the_config_map(key: str, value: str) -> None:
    objects = _objects("aws")
    _by(objects, "ConfigMap")["cnop-config"]["data"][key] = value
    assert _redis_credentials_in_config_maps(objects) == [("cnop-config", key)]
    # An ACL user named without its password is configuration, not a credential.
    objects = _objects("aws")
    _by(objects, "ConfigMap")["cnop-config"]["data"]["CNOP_REDIS_URL"] = "rediss://cnop@CLUSTER.cache.amazonaws.com/0"
    assert _redis_credentials_in_config_maps(objects) == []


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_autoscalers_for_gateway_and_order_and_a_disruption_budget_per_role(overlay: str) -> None:
    objects = _objects(overlay)
    hpas = _by(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"gateway", "order"}
    deployments = _by(objects, "Deployment")
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2
    pdbs = _by(objects, "PodDisruptionBudget")
    covered = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in pdbs.values()}
    assert covered == set(ROLE_NAMES)


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_network_policies_let_only_the_gateway_in_and_the_services_out_only_to_store_and_redis(overlay: str) -> None:
    policies = _by(_objects(overlay), "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    open_to_anyone = [
        p["spec"]["podSelector"]
        for p in policies.values()
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_anyone == [{"matchLabels": {"app.kubernetes.io/name": "gateway"}}]
    services_in = policies["services-from-gateway"]["spec"]
    assert services_in["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
    egress_ports = {
        port["port"]
        for p in policies.values()
        for rule in p["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }
    store_and_redis = {8000, 6379} if overlay == "local" else {443, 6379}
    assert egress_ports == {53, 8080} | store_and_redis


def test_the_local_overlay_runs_redis_and_dynamodb_local_and_the_aws_one_uses_iam_roles() -> None:
    local = _objects("local")
    assert {"redis", "dynamodb-local"} <= set(_by(local, "Deployment"))
    config = _by(local, "ConfigMap")["cnop-config"]["data"]
    assert config["CNOP_REDIS_URL"] == "redis://redis:6379/0"
    assert config["CNOP_SHAPE"] == "cloud" and config["CNOP_JWT_ALGORITHM"] == "EdDSA"

    aws = _objects("aws")
    accounts = _by(aws, "ServiceAccount")
    assert accounts["cnop"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/cnop-services")
    assert accounts["cnop-db-init"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("cnop-db-admin")
    config = _by(aws, "ConfigMap")["cnop-config"]["data"]
    assert "AWS_ACCESS_KEY_ID" not in config and "AWS_ENDPOINT_URL_DYNAMODB" not in config
    assert "redis" not in _by(aws, "Deployment")
    for deployment in _by(aws, "Deployment").values():
        assert _pod(deployment)["containers"][0]["image"] == "ACCOUNT.dkr.ecr.REGION.amazonaws.com/cnop:0.1.0"


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_an_ingress_with_tls_to_the_gateway_a_db_init_job_and_an_audit_cronjob(overlay: str) -> None:
    objects = _objects(overlay)
    [ingress] = _by(objects, "Ingress").values()
    assert ingress["spec"]["tls"]
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"gateway"}
    job = _by(objects, "Job")["cnop-db-init"]
    assert check_cnop_command(_pod(job)["containers"][0]["args"]) == "cnop db init"
    assert _pod(job)["serviceAccountName"] == "cnop-db-init"
    cron = _by(objects, "CronJob")["cnop-audit"]
    assert check_cnop_command(_pod(cron)["containers"][0]["args"]) == "cnop audit"
    for name, deployment in _by(objects, "Deployment").items():
        if name in ROLE_NAMES:
            assert "db" not in _pod(deployment)["containers"][0]["args"]  # no replica inits the store


# --- the renderer itself --------------------------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_renderer_merges_patches_labels_and_images_as_kustomize_does(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base/kustomization.yaml": "resources: [app.yaml]\nlabels:\n  - pairs: {team: money}\n",
            "base/app.yaml": (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, annotations: {a: '1', b: '2'}}\n"
                "spec:\n  template:\n    spec:\n      containers:\n"
                "        - {name: main, image: cnop, env: [{name: A, value: '1'}], args: [x, y]}\n"
                "        - {name: side, image: 'other:1'}\n"
            ),
            "over/kustomization.yaml": (
                "resources: [../base]\npatches:\n  - path: patch.yaml\nimages:\n  - {name: cnop, newName: reg/cnop, newTag: '2'}\n"
            ),
            "over/patch.yaml": (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, annotations: {a: null, c: '3'}}\n"
                "spec:\n  template:\n    spec:\n      containers:\n"
                "        - {name: main, env: [{name: B, value: '2'}], args: [z]}\n"
            ),
        },
    )
    [app] = render(tmp_path / "over")
    assert app["metadata"]["labels"] == {"team": "money"}
    assert app["metadata"]["annotations"] == {"b": "2", "c": "3"}
    main, side = app["spec"]["template"]["spec"]["containers"]
    assert main["image"] == "reg/cnop:2"
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert main["args"] == ["z"]  # a list of scalars is replaced
    assert side == {"name": "side", "image": "other:1"}


@pytest.mark.parametrize(
    ("kustomization", "error"),
    [
        ("resources: [a.yaml]\nnamePrefix: x-\n", "does not implement"),
        ("resources: [a.yaml]\npatches:\n  - path: p.yaml\n    target: {kind: Deployment}\n", "only `- path: FILE`"),
        ("resources: [a.yaml, a.yaml]\n", "defined twice"),
        ("resources: [a.yaml]\npatches:\n  - path: p.yaml\n", "matches 0 resources"),
    ],
)
def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path, kustomization: str, error: str) -> None:
    _write(
        tmp_path,
        {
            "kustomization.yaml": kustomization,
            "a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        },
    )
    with pytest.raises(ValueError, match=error):
        render(tmp_path)
