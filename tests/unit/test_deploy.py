"""The Kubernetes manifest is valid against the Kubernetes OpenAPI schema and keeps least privilege."""

from __future__ import annotations

import yaml

from tests.support import REPO


def documents() -> list[dict]:  # type: ignore[type-arg]
    return [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text()) if d]


def test_manifest_validates_against_kubernetes_schema() -> None:
    import kubernetes_validate  # a declared test dependency: missing means a broken set-up, not a skip
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "DaemonSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_daemonset_least_privilege() -> None:
    ds = next(d for d in documents() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["fileserver", "detach"]
