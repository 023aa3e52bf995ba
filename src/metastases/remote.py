"""``dvc push`` / ``dvc pull`` with a check of the remote first, and one clear line when it fails.

``python -m metastases.remote {check,push,pull} [--remote NAME]`` (``make push`` / ``make pull``):

* which remote: ``--remote`` or the default one (``core.remote`` in .dvc/config or .dvc/config.local);
* a folder remote must exist (for a push, its parent folder: an unmounted network share is not silently
  created on the local disk);
* an S3 remote with an ``endpointurl`` (MinIO, Ceph, a local S3 server) must accept a connection;
* then DVC runs; if it fails, its own reason is given in the same single line.

Nothing is written before the checks pass, so a bad remote leaves the workspace and the remote as they were.
The configuration itself stays DVC's: ``dvc remote add/modify`` (docs/sharing.md).
"""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from metastases.cli import configure_logging, run_stage
from metastases.compare.dvc_cli import dvc_env, run_dvc
from metastases.errors import UserError

log = logging.getLogger(__name__)

HELP = "docs/sharing.md"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Remote:
    """One DVC remote as ``dvc config --list`` shows it (local folder urls already absolute)."""

    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        """``s3``, ``gs``, ``ssh``, ... or ``local`` for a folder."""
        if "://" not in self.url:
            return "local"
        return self.url.split("://", 1)[0].lower()

    def describe(self) -> str:
        return f"DVC remote '{self.name}' ({self.url})"


def read_config(repo: Path | str = ".") -> tuple[str | None, dict[str, Remote]]:
    """The default remote's name (or None) and every configured remote, all config levels merged."""
    default = None
    settings: dict[str, dict[str, str]] = {}
    for line in run_dvc(["config", "--list"], repo).splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "core.remote":
            default = value
        elif key.startswith("remote."):
            name, _, option = key[len("remote.") :].rpartition(".")
            if name:
                settings.setdefault(name, {})[option] = value
    remotes = {name: Remote(name, opts.pop("url"), opts) for name, opts in settings.items() if "url" in opts}
    return default, remotes


def select_remote(name: str | None, repo: Path | str = ".") -> Remote:
    """The remote called ``name``, or the default one; a :class:`UserError` says how to configure it."""
    default, remotes = read_config(repo)
    wanted = name or default
    if not wanted:
        raise UserError(
            "no DVC remote configured: add one with `dvc remote add -d local /path/to/shared/folder` "
            f"(S3: `dvc remote add -d s3 s3://bucket/path`, see {HELP})"
        )
    if wanted not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise UserError(
            f"DVC remote '{wanted}' is not configured (configured: {known}): "
            f"add it with `dvc remote add {wanted} URL` or pick another with --remote NAME (see {HELP})"
        )
    return remotes[wanted]


def check_remote(remote: Remote, for_push: bool = False) -> None:
    """Fail with one line if ``remote`` cannot be reached; nothing is created."""
    if remote.scheme == "local":
        folder = Path(remote.url)
        must_exist = folder.parent if for_push else folder
        if not must_exist.is_dir():
            what = (
                f"its parent folder {must_exist} does not exist"
                if for_push
                else f"folder {folder} does not exist (nothing was pushed to it yet?)"
            )
            raise UserError(
                f"{remote.describe()} is unreachable: {what}; mount or create it, or point the remote "
                f"elsewhere with `dvc remote modify --local {remote.name} url /path/to/folder` (see {HELP})"
            )
        return
    endpoint = remote.options.get("endpointurl")
    if remote.scheme == "s3" and endpoint:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise UserError(
                f"{remote.describe()} is unreachable: cannot connect to endpoint {endpoint} "
                f"({exc.strerror or exc}); fix it with "
                f"`dvc remote modify [--local] {remote.name} endpointurl URL` (see {HELP})"
            ) from exc


def dvc_reason(stderr: str, returncode: int) -> str:
    """DVC's own reason for a failed push/pull, on one line."""
    if "do not exist neither locally nor on remote" in stderr:
        return "some files are on neither this machine nor the remote (run `dvc push` where they were made)"
    errors = [line.removeprefix("ERROR:").strip() for line in stderr.splitlines() if line.startswith("ERROR")]
    if errors:
        return errors[-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {returncode}"


def transfer(command: str, remote: Remote, repo: Path | str = ".", jobs: int | None = None) -> None:
    """Run ``dvc push`` or ``dvc pull`` against ``remote``; DVC's output goes to ours."""
    args = [command, "--remote", remote.name, *(["--jobs", str(jobs)] if jobs else [])]
    cmd = [sys.executable, "-m", "dvc", *args]
    log.debug("running %s in %s", " ".join(cmd), repo)
    done = subprocess.run(cmd, cwd=repo, env=dvc_env(), stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        reason = dvc_reason(done.stderr, done.returncode)
        raise UserError(f"`dvc {command}` with {remote.describe()} failed: {reason} (see {HELP})")
    sys.stderr.write(done.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="dvc push / dvc pull with a check of the remote first")
    parser.add_argument("command", choices=("check", "push", "pull"))
    parser.add_argument("--remote", "-r", help="remote name (default: core.remote)")
    parser.add_argument("--jobs", "-j", type=int, help="parallel transfers (DVC's default if unset)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    remote = select_remote(args.remote, args.repo)
    check_remote(remote, for_push=args.command == "push")
    if args.command == "check":
        print(f"{remote.describe()} is reachable")
        return
    transfer(args.command, remote, args.repo, args.jobs)


if __name__ == "__main__":
    sys.exit(run_stage(main))
