"""The example job specs are flat YAML in the format of DESIGN.md (the spec parser itself is tested with
the server); the DDP example asks for the torch rendezvous on two replicas and runs the example script."""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SPEC_FIELDS = {"kind", "name", "project", "replicas", "distributed", "resources", "command", "env", "priority",
               "max_runtime", "retries"}


def test_examples_name_no_project_so_they_go_to_the_callers() -> None:
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if isinstance(spec, dict) and "kind" in spec:
            assert "project" not in spec, path


def test_hello_is_a_one_replica_job() -> None:
    spec = yaml.safe_load((EXAMPLES / "hello.yaml").read_text())
    assert set(spec) <= SPEC_FIELDS
    assert spec["kind"] == "job" and spec["command"].startswith("echo ")
    assert "replicas" not in spec


def test_mnist_ddp_is_a_two_replica_torch_gang() -> None:
    spec = yaml.safe_load((EXAMPLES / "mnist_ddp" / "job.yaml").read_text())
    assert set(spec) <= SPEC_FIELDS
    assert (spec["kind"], spec["replicas"], spec["distributed"]) == ("job", 2, "torch")
    # the command starts in the spec file's directory: the script is named relative to it
    assert spec["command"].startswith("python train.py ")
    assert (EXAMPLES / "mnist_ddp" / "train.py").is_file()
    assert all(isinstance(value, str) for value in spec["env"].values())
