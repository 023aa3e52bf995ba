"""Sharing through a DVC remote, with the real ``dvc`` CLI in temporary Git + DVC repositories.

A small project (a tracked data folder, one stage with a cached output and a metrics file) is pushed,
cloned with ``git clone`` and pulled, first through a folder remote (the project's default kind, configured
as a path relative to the repository, as in .dvc/config), then through an S3 server that the test starts on
loopback (moto's server mode, fake credentials in environment variables). After the pull the clone must be
byte-identical and nothing may need to re-run. Bad remotes must give one line naming the remote and the fix,
and write nothing.
"""

from __future__ import annotations

import filecmp
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REMOTE_HELP = "docs/sharing.md"
BUCKET = "metastases-test"

SUMMARISE = """\
import json
from pathlib import Path

files = sorted(p for p in Path("data/raw").rglob("*") if p.is_file())
Path("out").mkdir(exist_ok=True)
Path("out/summary.txt").write_text("".join(f"{p.as_posix()} {p.stat().st_size}\\n" for p in files))
Path("metrics").mkdir(exist_ok=True)
Path("metrics/summary.json").write_text(json.dumps({"files": len(files)}) + "\\n")
"""

DVC_YAML = """\
stages:
  summarise:
    cmd: python summarise.py
    deps: [summarise.py, data/raw]
    outs: [out]
    metrics: [{metrics/summary.json: {cache: false}}]
"""

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata look-ups
}


def _env(tmp: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # stage commands say `python`: this environment's
    return {
        **os.environ,
        **FAKE_AWS,
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),  # never a developer's real AWS profile
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "DVC_NO_ANALYTICS": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


@dataclass(frozen=True)
class Project:
    root: Path  # holds the repository, its remote folder and the clones side by side
    repo: Path

    def run(self, cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            cmd, cwd=cwd, env=_env(self.root), capture_output=True, text=True, timeout=120, check=False
        )
        if ok:
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def dvc(self, cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "dvc", *args], cwd, ok)

    def remote(self, cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """``python -m metastases.remote ARGS`` (``make push`` / ``make pull``)."""
        return self.run([sys.executable, "-m", "metastases.remote", *args], cwd, ok)

    def git(self, cwd: Path, *args: str) -> str:
        return self.run(["git", *args], cwd).stdout

    def clone(self, name: str) -> Path:
        self.git(self.root, "clone", "-q", str(self.repo), name)
        return self.root / name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("sharing")
    repo = root / "project"
    repo.mkdir()
    p = Project(root, repo)
    p.git(repo, "init", "-q", "-b", "main")
    p.git(repo, "config", "user.email", "toy@example.invalid")
    p.git(repo, "config", "user.name", "toy")
    p.dvc(repo, "init", "-q")
    for key, value in (
        ("core.analytics", "false"),
        ("core.check_update", "false"),
        ("studio.offline", "true"),
    ):
        p.dvc(repo, "config", key, value)
    # as in the project's .dvc/config: a folder beside the repository (DVC stores it relative to .dvc/)
    p.dvc(repo, "remote", "add", "-d", "local", "../store")

    raw = repo / "data" / "raw" / "patient-01"
    raw.mkdir(parents=True)
    (raw / "flair.dcm").write_bytes(bytes(range(256)) * 40)
    (raw / "t2.dcm").write_bytes(os.urandom(5000))
    (repo / "data" / "raw" / "labels.csv").write_text("patient,label\npatient-01,metastases\n")
    (repo / "summarise.py").write_text(SUMMARISE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    p.dvc(repo, "add", "-q", "data/raw")
    p.dvc(repo, "repro", "-q")
    p.git(repo, "add", "-A")
    p.git(repo, "commit", "-qm", "data and one stage")
    return p


def _tracked_files(repo: Path) -> list[Path]:
    return sorted(
        path.relative_to(repo)
        for top in ("data", "out", "metrics")
        for path in (repo / top).rglob("*")
        if path.is_file()
    )


def assert_same_and_up_to_date(p: Project, clone: Path) -> None:
    """The clone has every file of the original, byte for byte, and DVC sees nothing to do."""
    files = _tracked_files(p.repo)
    # data/raw.dvc, data/.gitignore, 3 raw files, out/summary.txt, metrics/summary.json
    assert len(files) == 7, files
    assert _tracked_files(clone) == files
    _, mismatch, errors = filecmp.cmpfiles(p.repo, clone, [str(f) for f in files], shallow=False)
    assert (mismatch, errors) == ([], [])
    assert "Data and pipelines are up to date." in p.dvc(clone, "status").stdout
    dry = p.dvc(clone, "repro", "--dry").stdout
    assert "Running stage" not in dry and "Data and pipelines are up to date." in dry
    assert p.dvc(clone, "metrics", "diff").stdout.strip() == ""
    assert p.git(clone, "status", "--porcelain").strip() == ""


def test_push_clone_pull_through_the_default_folder_remote(project: Project) -> None:
    p = project
    assert "pushed" in p.dvc(p.repo, "push").stdout  # no -r: the default remote
    assert (p.root / "store" / "files" / "md5").is_dir()

    clone = p.clone("colleague")
    assert not (clone / "data" / "raw").exists()
    assert "Data and pipelines are up to date." not in p.dvc(clone, "status").stdout
    pulled = p.dvc(clone, "pull").stdout
    assert "added" in pulled or "fetched" in pulled, pulled
    assert_same_and_up_to_date(p, clone)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with an empty bucket."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def _add_s3_remote(p: Project, repo: Path, endpoint: str) -> None:
    """The documented commands; the endpoint in .dvc/config.local, credentials only in the environment."""
    p.dvc(repo, "remote", "add", "--local", "s3", f"s3://{BUCKET}/store")
    p.dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", endpoint)


def _s3_keys(endpoint: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
    )
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_push_clone_pull_through_an_s3_server(project: Project, s3_endpoint: str) -> None:
    p = project
    _add_s3_remote(p, p.repo, s3_endpoint)
    assert p.git(p.repo, "status", "--porcelain").strip() == ""  # nothing of it in Git
    p.remote(p.repo, "push", "--remote", "s3")
    keys = _s3_keys(s3_endpoint)
    assert keys and all(key.startswith("store/files/md5/") for key in keys)

    clone = p.clone("colleague-s3")
    _add_s3_remote(p, clone, s3_endpoint)
    p.remote(clone, "pull", "--remote", "s3")
    assert_same_and_up_to_date(p, clone)


def _one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in (*needles, REMOTE_HELP):
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_remotes_give_one_line_naming_the_remote_and_write_nothing(project: Project) -> None:
    p = project
    clone = p.clone("bad-remotes")
    cache = clone / ".dvc" / "cache"

    # the default folder remote is missing (a share not mounted): pull names it and the fix
    missing = p.root / "not-mounted" / "store"
    p.dvc(clone, "remote", "modify", "--local", "local", "url", str(missing))
    _one_error_line(p.remote(clone, "pull", ok=False), "'local'", str(missing), "dvc remote modify")
    # ... and push refuses to create it on the local disk
    _one_error_line(p.remote(clone, "push", ok=False), "'local'", "dvc remote modify")
    assert not (p.root / "not-mounted").exists()

    # an S3 endpoint that does not answer: the remote, the endpoint, the fix
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    _add_s3_remote(p, clone, endpoint)
    _one_error_line(p.remote(clone, "pull", "--remote", "s3", ok=False), "'s3'", endpoint, "endpointurl")

    # a remote name that is not configured
    _one_error_line(p.remote(clone, "pull", "--remote", "nosuch", ok=False), "'nosuch'", "dvc remote add")

    # nothing was pulled or half-written
    assert not (clone / "data" / "raw").exists() and not (clone / "out").exists()
    assert not cache.exists() or not any(path.is_file() for path in cache.rglob("*"))
    assert p.git(clone, "status", "--porcelain").strip() == ""


def test_no_remote_at_all_says_how_to_add_one(tmp_path: Path, project: Project) -> None:
    p = project
    p.dvc(tmp_path, "init", "-q", "--no-scm")
    _one_error_line(p.remote(tmp_path, "check", ok=False), "no DVC remote configured", "dvc remote add -d")


def test_check_names_a_reachable_remote(project: Project) -> None:
    (project.root / "store").mkdir(exist_ok=True)  # made by the first push; this test may run alone
    done = project.remote(project.repo, "check")
    assert done.stdout.strip() == f"DVC remote 'local' ({project.root / 'store'}) is reachable"


def test_project_default_remote_is_a_folder_beside_the_repository(tmp_path: Path) -> None:
    """The committed .dvc/config: remote `local`, the default, resolved next to the checkout."""
    repo_root = Path(__file__).resolve().parents[1]
    p = Project(tmp_path, repo_root)
    settings = dict(
        line.split("=", 1) for line in p.dvc(repo_root, "config", "--list", "--project").stdout.splitlines()
    )
    assert settings["core.remote"] == "local"
    assert Path(settings["remote.local.url"]) == repo_root.parent / "metastases-dvc-remote"
