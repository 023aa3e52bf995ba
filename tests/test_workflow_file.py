"""The pull-request workflow (.github/workflows/pr.yml), checked offline: it cannot be run here.

``check-jsonschema`` validates it against the GitHub workflow schema vendored in the package, ``zizmor
--offline`` audits it for the usual Actions security problems (template injection, unpinned actions,
persisted credentials, excessive permissions), with no network; the rest pins down what the workflow must do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "pr.yml"
BIN = Path(sys.executable).parent


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed in {BIN}: run `make install` (it is in the dev extra)")
    # no token: zizmor --offline makes no request anyway, and a developer's token is not needed
    env = {
        k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")
    }
    return subprocess.run(
        [str(exe), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_workflow_matches_the_github_workflow_schema() -> None:
    done = _tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_offline_finds_nothing() -> None:
    done = _tool("zizmor", "--offline", "--no-progress", "--color", "never", str(WORKFLOW))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr


def _workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_workflow_runs_on_pull_requests_with_least_privilege() -> None:
    doc = _workflow()
    assert "pull_request" in doc["on"] and "pull_request_target" not in doc["on"]
    assert doc["permissions"] == {}
    (job,) = doc["jobs"].values()
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_every_action_is_pinned_to_a_full_commit_sha() -> None:
    uses = [step["uses"] for job in _workflow()["jobs"].values() for step in job["steps"] if "uses" in step]
    assert {u.split("@")[0] for u in uses} == {
        "actions/checkout",
        "actions/setup-python",
        "actions/upload-artifact",
    }
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref


def test_steps_check_out_install_pull_reproduce_report_and_comment() -> None:
    (job,) = _workflow()["jobs"].values()
    steps = job["steps"]
    checkout = steps[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"] == {"fetch-depth": 0, "persist-credentials": False}
    assert steps[1]["with"]["python-version"] == "3.11"
    script = "\n".join(step.get("run", "") for step in steps)
    for command in ("make install", "make pull", "dvc repro", 'make report BASE="origin/$BASE_REF"'):
        assert command in script, command
    assert "gh pr comment" in script and "--body-file" in script
    # ${{ }} only in env: values, never pasted into a script (template injection)
    assert all("${{" not in step.get("run", "") for step in steps)
    secrets = [
        value
        for step in steps
        for value in (step.get("env") or {}).values()
        if isinstance(value, str) and "secrets." in value
    ]
    assert len(secrets) == 2
