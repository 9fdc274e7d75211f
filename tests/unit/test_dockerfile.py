"""The Dockerfile, linted (hadolint's main rules, checked with dockerfile-parse: no image builder
or hadolint runs on this machine, README "Several machines"), and consistent with the manifest."""

from __future__ import annotations

import json

from tests.support import REPO


def instructions() -> list[dict[str, str]]:
    from dockerfile_parse import DockerfileParser  # a declared test dependency

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    return parser.structure  # type: ignore[no-any-return]


def test_dockerfile_lint() -> None:
    ins = instructions()
    kinds = [i["instruction"] for i in ins]
    (base,) = [i["value"] for i in ins if i["instruction"] == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "debian" and tag.startswith("12") and tag != "latest", base  # DL3006/DL3007: pinned Debian 12
    assert "ADD" not in kinds  # DL3020: COPY for files
    for run in (i["value"] for i in ins if i["instruction"] == "RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and " -y" in run, run  # DL3015, DL3014
            assert "rm -rf /var/lib/apt/lists/*" in run, run  # DL3009: no apt lists left in the layer
        assert "sudo" not in run and "apt-get upgrade" not in run, run  # DL3004, DL3005
    entry = next(i["value"] for i in ins if i["instruction"] == "ENTRYPOINT")
    assert json.loads(entry) == ["fileserver"]  # DL3025: exec form, signals reach the server
    assert any(i["instruction"] == "RUN" and "make setup" in i["value"] for i in ins)  # set up as a host is
    assert any(i["instruction"] == "WORKDIR" for i in ins)  # DL3000-style: no relative COPY target
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored  # the host's virtualenv never lands in the image


def test_image_is_the_one_the_daemonset_names() -> None:
    import yaml

    from fileserver import __version__

    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"fileserver:{__version__}"
    assert f"fileserver:{__version__}" in (REPO / "Dockerfile").read_text()
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
