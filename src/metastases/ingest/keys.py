"""Patient keys: what every output calls a patient, so that no folder name that could identify anyone
reaches a file Git tracks.

``patient_key: auto`` (the default) keeps folder names only for the generated demo cohort, recognised by
its marker file (:data:`DEMO_MARKER`, written by ``python -m metastases.demo_cohort``) *and* folder names
of its fake pattern (``mts-7``, ``norma-12``); any other raw folder gets salted hashes. ``hash`` always
hashes; ``folder`` keeps names as they are (with a warning when they look like identifiers).

The salt is a secret: never in params.yaml. It comes from the environment variable :data:`SALT_ENV`,
else from ``ingest.salt_file`` (Git-ignored), which is created with a random salt on first use.
Placeholders (``change-me``, empty, shorter than :data:`MIN_SALT_CHARS`) are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from metastases.errors import UserError
from metastases.params import IngestParams

log = logging.getLogger(__name__)

SALT_ENV = "METASTASES_SALT"
DEMO_MARKER = "DEMO_COHORT.txt"
DEMO_MARKER_TEXT = (
    "This folder is the synthetic demo cohort written by `python -m metastases.demo_cohort`.\n"
    "Its patient names (mts-N, norma-N) and every identity in its DICOM headers are fake, so ingest\n"
    "(ingest.patient_key: auto) keeps the folder names as patient keys. Delete this folder before\n"
    "copying in a real export.\n"
)
"""The marker's content; ``auto`` checks its first line."""
DEMO_FOLDER = re.compile(r"^(mts|norma)-[0-9]{1,4}$")
MIN_SALT_CHARS = 16
PLACEHOLDER_SALTS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "secret",
        "salt",
        "password",
        "pepper",
        "example",
        "default",
        "test",
    }
)
_IDENTIFIER_LIKE = re.compile(r"[0-9]{5,}|[\^,]")


@dataclasses.dataclass(frozen=True)
class KeyScheme:
    """How folder names become keys: ``mode`` is ``folder`` or ``hash``; ``why`` says so for the report."""

    mode: str
    why: str
    salt: str = dataclasses.field(default="", repr=False)

    def __call__(self, folder_name: str) -> str:
        if self.mode == "folder":
            return folder_name
        digest = hmac.new(self.salt.encode(), folder_name.encode(), hashlib.sha256).hexdigest()
        return f"p-{digest[:16]}"

    @property
    def salt_fingerprint(self) -> str:
        """8 hex digits that tell two salts apart (colleagues compare them), revealing nothing of the salt."""
        if not self.salt:
            return ""
        return hmac.new(self.salt.encode(), b"metastases salt fingerprint", hashlib.sha256).hexdigest()[:8]


def is_demo_cohort(raw_dir: Path, folder_names: Sequence[str]) -> bool:
    """True when ``raw_dir`` holds the demo marker and every patient folder has a demo name."""
    marker = raw_dir / DEMO_MARKER
    try:
        first_line = marker.read_text().splitlines()[0] if marker.is_file() else ""
    except (OSError, UnicodeDecodeError, IndexError):
        return False
    return first_line == DEMO_MARKER_TEXT.splitlines()[0] and all(DEMO_FOLDER.match(n) for n in folder_names)


def looks_identifying(folder_name: str) -> bool:
    """A long digit run (record numbers, dates) or ``^``/``,`` (DICOM/"Last, First" person names)."""
    return bool(_IDENTIFIER_LIKE.search(folder_name))


def check_salt(salt: str, source: str) -> str:
    """``salt`` stripped, or a UserError naming ``source`` when it is empty, a placeholder or too short."""
    text = salt.strip()
    if not text:
        raise UserError(f"the salt in {source} is empty; {_FIX}")
    if text.lower() in PLACEHOLDER_SALTS or "change" in text.lower() or len(set(text)) < 4:
        raise UserError(f"the salt in {source} is a placeholder; {_FIX}")
    if len(text) < MIN_SALT_CHARS:
        raise UserError(
            f"the salt in {source} is too short ({len(text)} < {MIN_SALT_CHARS} characters); {_FIX}"
        )
    return text


_FIX = (
    f"set {SALT_ENV} to a long random secret (python -c 'import secrets; print(secrets.token_hex(32))'), "
    "or delete the salt file to have a new one made"
)


def load_salt(salt_file: Path, environ: Mapping[str, str] | None = None) -> str:
    """The salt from ``environ[SALT_ENV]``, else ``salt_file``, else a new random one written there."""
    environ = os.environ if environ is None else environ
    if SALT_ENV in environ:
        return check_salt(environ[SALT_ENV], f"the environment variable {SALT_ENV}")
    if salt_file.is_file():
        try:
            return check_salt(salt_file.read_text(), str(salt_file))
        except UnicodeDecodeError:
            raise UserError(f"the salt file {salt_file} is not text; {_FIX}") from None
    if salt_file.exists():
        raise UserError(f"ingest.salt_file {salt_file} is not a file; name a file (or set {SALT_ENV})")
    salt = secrets.token_hex(32)
    salt_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(salt + "\n")
    log.warning(
        "created a new secret salt for hashed patient keys in %s: keep it out of Git, back it up, and share "
        "it only with colleagues who may see the data (README, 'Using your own DICOM data'); "
        "losing it changes every patient key",
        salt_file,
    )
    return salt


def key_scheme(
    raw_dir: Path, folder_names: Sequence[str], params: IngestParams, *, salt: str | None = None
) -> KeyScheme:
    """How this cohort's keys are made (see the module docstring).

    Args:
        raw_dir: the raw root (where the demo marker would be).
        folder_names: the patient folder names.
        params: ``patient_key`` and ``salt_file``.
        salt: the secret salt, overriding the environment and the salt file; checked like them.
    """
    mode = params.patient_key
    if mode == "auto":
        if is_demo_cohort(raw_dir, folder_names):
            return KeyScheme("folder", "folder names (the generated demo cohort: names known to be fake)")
        mode = "hash"
    if mode == "folder":
        suspicious = sum(looks_identifying(name) for name in folder_names)
        if suspicious:
            log.warning(
                "ingest.patient_key is 'folder' and %d folder name(s) look like identifiers (long digit "
                "runs, '^' or ','): they will be written to Git-tracked files; use patient_key auto or hash",
                suspicious,
            )
        return KeyScheme("folder", "folder names (ingest.patient_key: folder)")
    resolved = check_salt(salt, "the salt given") if salt is not None else load_salt(Path(params.salt_file))
    return KeyScheme("hash", "salted hashes of the folder names", resolved)
