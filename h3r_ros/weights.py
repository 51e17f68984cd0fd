"""Fetch a released Human3R checkpoint from the Hugging Face Hub and convert it.

    python -m h3r_ros.weights fetch [--variant 672S|672B|672L|896L] [--dest models/]

The file is downloaded with ``huggingface_hub`` (so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_TOKEN`` and its progress bars apply) into a hidden
staging folder ``<dest>/.download/``; a dropped connection is resumed with range requests,
and a run that stops half way resumes from the partial file the next time. The complete
file is checked against the SHA-256 the Hub publishes for it, then converted to
``<dest>/human3r_<variant>.safetensors`` + ``.json`` (loads memory-mapped, no pickle),
which is what the node and the demo pick up. Only verified, complete files ever get a
checkpoint name in ``<dest>``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO_ID = "faneggg/human3r"
VARIANTS = ("672S", "672B", "672L", "896L")
DEFAULT_VARIANT = "672S"
STAGING = ".download"
# What upstream states about the weights' terms (its README and the components it builds on).
LICENCE_NOTE = (
    "Licence: the Human3R weights are published by the Human3R authors (github.com/fanegg/Human3R, "
    "huggingface.co/faneggg/human3r); read the terms stated there before use. Human3R builds on "
    "Multi-HMR (NAVER LABS Europe), licensed CC BY-NC-SA 4.0: non-commercial use only, attribution, "
    "share-alike; treat the checkpoints as non-commercial. SMPL-X (smpl-x.is.tue.mpg.de) has its own "
    "licence and is not downloaded here."
)
_HASH_BLOCK = 16 * 2**20
_CONVERT_MARGIN = 64 * 2**20  # safetensors header and alignment, on top of the tensors


class FetchError(RuntimeError):
    """A fetch failed; ``kind`` is one of offline, not_found, disk_full, checksum, http, convert."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str  # where the bytes come from (the Hub's resolve URL or its redirect)
    sha256: str
    size: int
    commit: str


def checkpoint_filename(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return f"human3r_{variant}.pth"


def default_dest() -> Path:
    """Where the node looks: models/ of the source checkout, else the installed package's
    share/h3r_ros/models (the build links it to models/ of the sources), else ./models."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "package.xml").is_file():
        return checkout / "models"
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("h3r_ros")) / "models"
    except (ImportError, LookupError, OSError):  # no ament index, package not installed
        return Path("models")
    return installed if installed.is_dir() else Path("models")


def fetch_command(variant: str = DEFAULT_VARIANT) -> str:
    return "bash scripts/fetch_weights.sh" + ("" if variant == DEFAULT_VARIANT else f" --variant {variant}")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def remote_file(variant: str, revision: str = "main", timeout: float = 10.0) -> RemoteFile:
    """The Hub's metadata of one checkpoint (one HEAD request); raises FetchError."""
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    filename = checkpoint_filename(variant)
    where = f"{REPO_ID}/{filename}@{revision} on {_endpoint()}"
    if constants.is_offline_mode():
        raise FetchError("offline", f"offline: HF_HUB_OFFLINE is set, so {where} cannot be fetched")
    try:
        meta = get_hf_file_metadata(hf_hub_url(REPO_ID, filename, revision=revision), timeout=timeout)
    except (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled) as exc:
        raise FetchError("offline", f"offline: cannot reach {_endpoint()} ({exc})") from None
    except GatedRepoError as exc:
        raise FetchError("http", f"access to {REPO_ID} is restricted (log in or set HF_TOKEN): {exc}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise FetchError("not_found", f"not found: {where} ({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        raise FetchError("http", f"the Hub refused {where}: {exc}") from None
    except httpx2.HTTPError as exc:
        raise FetchError("offline", f"offline: talking to {_endpoint()} failed ({type(exc).__name__}: {exc})") from None
    sha256 = (meta.etag or "").lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256) or not meta.size or not meta.commit_hash:
        raise FetchError(
            "http",
            f"{where}: the server gave no SHA-256 / size / commit for the file (etag {meta.etag!r}, size {meta.size!r}); "
            "is HF_ENDPOINT a Hugging Face Hub?",
        )
    return RemoteFile(filename, meta.location, sha256, int(meta.size), meta.commit_hash)


def hub_reachable(variant: str = DEFAULT_VARIANT, timeout: float = 3.0) -> tuple[RemoteFile | None, str]:
    """Quick check for the demo: (metadata, '') or (None, why not), within about ``timeout`` s
    whatever the network does (name resolution included)."""
    outcome: list = []

    def probe():
        try:
            outcome.append((remote_file(variant, timeout=timeout), ""))
        except FetchError as exc:
            outcome.append((None, str(exc)))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else (None, f"offline: no answer from {_endpoint()} within {timeout:.0f} s")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _converted_from(header_path: Path, sha256: str) -> bool:
    """Whether a converted pair was made from the file with this SHA-256."""
    tensors_path = header_path.with_suffix(".safetensors")
    try:
        recorded = json.loads(header_path.read_text())["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == sha256 and tensors_path.is_file()


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FetchError(
            "disk_full",
            f"disk full: {folder} has {_gb(free)} free, the download and its conversion need {_gb(needed)}; "
            "free some space or pass --dest on a larger disk",
        )


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _download(remote: RemoteFile, part: Path, log) -> None:
    """Append the missing bytes of ``remote`` to ``part`` (range request when resuming)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:  # not a prefix of this file: start again
        part.unlink()
        have = 0
    if have:
        log(f"resuming {remote.filename} at {_gb(have)} of {_gb(remote.size)}")
    headers = build_hf_headers()
    if urlsplit(remote.url).hostname != urlsplit(_endpoint()).hostname:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the Hub
    try:
        with open(part, "ab") as f:
            http_get(remote.url, f, resume_size=have, headers=headers, expected_size=remote.size,
                     displayed_filename=remote.filename)
    except (httpx2.HTTPError, HfHubHTTPError) as exc:
        got = part.stat().st_size if part.exists() else 0
        raise FetchError(
            "offline", f"download interrupted at {_gb(got)} of {_gb(remote.size)} ({type(exc).__name__}: {exc}); "
            "run the same command again to resume",
        ) from None
    except OSError as exc:
        if _is_disk_full(exc):
            raise FetchError("disk_full", f"disk full while writing {part}: {exc}") from None
        raise FetchError("http", f"download of {remote.filename} failed: {exc}; run the same command again") from None


def _cached_copy(remote: RemoteFile) -> Path | None:
    """The file from the Hugging Face cache (HF_HOME / HF_HUB_CACHE), e.g. from an earlier
    ``hf download``, when it is there."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(REPO_ID, remote.filename, revision=remote.commit)
    return Path(cached) if isinstance(cached, str) and os.path.getsize(cached) == remote.size else None


def fetch(variant: str = DEFAULT_VARIANT, dest: Path | None = None, revision: str = "main",
          keep_pth: bool = False, log=print) -> Path:
    """Download, verify and convert one checkpoint; returns the ``.safetensors`` path."""
    from h3r_ros.model.checkpoint import CheckpointError, convert_checkpoint

    dest = Path(dest) if dest is not None else default_dest()
    remote = remote_file(variant, revision)
    stem = Path(remote.filename).stem
    tensors_path, header_path = dest / f"{stem}.safetensors", dest / f"{stem}.json"
    if _converted_from(header_path, remote.sha256):
        log(f"{tensors_path} is already there (converted from SHA-256 {remote.sha256[:16]}...)")
        return tensors_path

    staging = dest / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / remote.filename  # in a sub-folder: never taken for a checkpoint
    part = staging / f"{remote.filename}.{remote.sha256[:16]}.part"
    log(f"{REPO_ID}/{remote.filename} (commit {remote.commit[:12]}, {_gb(remote.size)}, SHA-256 {remote.sha256[:16]}...)")

    source = staged if staged.is_file() and sha256_of(staged) == remote.sha256 else None
    if source is None and (cached := _cached_copy(remote)) is not None:
        log(f"found it in the Hugging Face cache: {cached}; verifying")
        source = cached if sha256_of(cached) == remote.sha256 else None
        if source is None:
            log("the cached copy does not match the Hub's SHA-256; downloading")
    if source is None:
        have = part.stat().st_size if part.exists() else 0
        _check_space(staging, max(remote.size - have, 0) + remote.size + _CONVERT_MARGIN)
        _download(remote, part, log)
        log("verifying SHA-256 ...")
        actual = sha256_of(part)
        if actual != remote.sha256:
            part.unlink()
            raise FetchError(
                "checksum",
                f"checksum mismatch: {remote.filename} has SHA-256 {actual}, the Hub says {remote.sha256}; "
                "the download was deleted, run the command again",
            )
        os.replace(part, staged)
        source = staged
    else:
        _check_space(dest, remote.size + _CONVERT_MARGIN)

    log(f"converting to {tensors_path} ...")
    try:
        convert_checkpoint(source, dest / stem, source_sha256=remote.sha256)
    except CheckpointError as exc:
        cause = exc.__cause__
        if _is_disk_full(cause) or "No space left" in str(exc):
            raise FetchError("disk_full", f"disk full while converting: {exc}") from None
        raise FetchError("convert", f"cannot convert {source}: {exc}") from None
    if source == staged:
        if keep_pth:
            os.replace(staged, dest / remote.filename)
            log(f"kept the original {dest / remote.filename}")
        else:
            staged.unlink()
    return tensors_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m h3r_ros.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("fetch", help="download, verify and convert a released checkpoint")
    cmd.add_argument("--variant", default=DEFAULT_VARIANT, choices=VARIANTS,
                     help=f"which checkpoint (default {DEFAULT_VARIANT}, the smallest and fastest)")
    cmd.add_argument("--dest", type=Path, help="destination folder (default: where the node looks, models/ of the sources)")
    cmd.add_argument("--revision", default="main", help="Hub revision: branch, tag or commit (default main)")
    cmd.add_argument("--keep-pth", action="store_true",
                     help="also keep the original .pth beside the converted pair (twice the disk space)")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.variant, args.dest, args.revision, args.keep_pth)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    print(f"checkpoint: {path} (+ {path.with_suffix('.json').name})")
    print(LICENCE_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
