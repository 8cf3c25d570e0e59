"""AdaCLIP checkpoints: the published registry and Hub downloads, verified and cached.

This is the only module that touches the network. Every download goes through
``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``), so a file is fetched once and later
runs, ``HF_HUB_OFFLINE=1`` ones included, read it from there. ``HF_ENDPOINT``,
``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read at each call, not
at import.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx2
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from adaclip.checkpoint_io import (
    check_adaclip_names,
    checked_suffix,
    read_state,
)
from adaclip.errors import CheckpointError, HubError

logger = logging.getLogger(__name__)

SPACE_REPO = "Caoyunkang/AdaCLIP"
"""The authors' Hugging Face Space, which holds the published checkpoints."""

MIRROR_REPO = "cubert-gmbh/adaclip"
"""A third-party model repo with byte-identical copies at its top level."""

DEFAULT_CHECKPOINT = "all"
REPO_TYPE_PREFIXES = {"spaces/": "space", "datasets/": "dataset", "models/": "model"}
BACKBONE_HUB = {("ViT-L-14-336", "openai"): "timm/vit_large_patch14_clip_336.openai/"}
"""Hub repos of the backbones AdaCLIP is published for, by (model, tag), as open_clip's own
registry gives them; other pairs are looked up in that registry (see :func:`backbone_files`)."""

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The file names open_clip looks for in a Hub repo named without a file, safest first."""


@dataclass(frozen=True)
class HubFile:
    """One file in a Hugging Face Hub repository.

    Attributes:
        repo_id: ``OWNER/REPO``.
        filename: The path inside the repository.
        repo_type: ``model``, ``space`` or ``dataset``.
        revision: A branch, tag or commit; ``None`` means ``main``.
    """

    repo_id: str
    filename: str
    repo_type: str = "model"
    revision: str | None = None

    def url(self, endpoint: str) -> str:
        """The file's download address on the Hub at ``endpoint``."""
        return hf_hub_url(
            self.repo_id,
            self.filename,
            repo_type=self.repo_type,
            revision=self.revision,
            endpoint=endpoint,
        )

    def __str__(self) -> str:
        prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[self.repo_type]
        suffix = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo_id}/{self.filename}{suffix}"


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One of the checkpoints the AdaCLIP authors released, and where to get it.

    Attributes:
        name: The short name used on the command line (``all``, ...).
        trained_on: The auxiliary datasets it was trained on.
        space_file: The file in the authors' Space, tried first.
        mirror_file: The byte-identical copy in the mirror repo, tried when the Space fails.
        sha256: The published digest; any other bytes are refused.
        size_mb: Download size in megabytes (10**6 bytes).
    """

    name: str
    trained_on: str
    space_file: HubFile
    mirror_file: HubFile
    sha256: str
    size_mb: float = 42.7

    @property
    def sources(self) -> tuple[HubFile, HubFile]:
        """The places to fetch it from, in the order they are tried."""
        return (self.space_file, self.mirror_file)


def _published(name: str, trained_on: str, filename: str, sha256: str) -> PublishedCheckpoint:
    """A registry entry for ``weights/<filename>`` in the Space and ``<filename>`` in the mirror."""
    return PublishedCheckpoint(
        name=name,
        trained_on=trained_on,
        space_file=HubFile(SPACE_REPO, f"weights/{filename}", repo_type="space"),
        mirror_file=HubFile(MIRROR_REPO, filename),
        sha256=sha256,
    )


# TODO(#3): paths and digests come from METHOD.md section 9; they were not checked against the
# live Hub, which this project's test machines cannot reach (tests use a loopback look-alike).
CHECKPOINTS: dict[str, PublishedCheckpoint] = {
    entry.name: entry
    for entry in (
        _published(
            "all",
            "all 14 industrial and medical datasets of the paper",
            "pretrained_all.pth",
            "33e8d3db1cb4aab030866b8b70a46e10aa27ebf2c23b5463cb07f2574addd98c",
        ),
        _published(
            "mvtec-colondb",
            "MVTec AD + ColonDB",
            "pretrained_mvtec_colondb.pth",
            "be51a42c052bd4cf060e54f503a1f5d0b2a3b899bc8dc2e243042f18b215427e",
        ),
        _published(
            "visa-clinicdb",
            "VisA + ClinicDB",
            "pretrained_visa_clinicdb.pth",
            "3deabbbaf1e412cfdfcb42923a500b986f4b9ee96ccbc7a735d89dbc87df44c8",
        ),
    )
}
"""The published checkpoints by name (METHOD.md section 9). All need ViT-L-14-336 at S=518."""


def hub_endpoint() -> str:
    """The Hub address: ``HF_ENDPOINT`` as it is now, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, as set now."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        folder = env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    elif env.get("HF_HOME"):
        folder = os.path.join(env["HF_HOME"], "hub")
    else:
        folder = hf_constants.HF_HUB_CACHE
    return Path(os.path.expandvars(folder)).expanduser()


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids network calls now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is None:
        return hf_constants.HF_HUB_OFFLINE
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


SPEC_FORMS = (
    "hf://OWNER/REPO/PATH for a model repo, hf://spaces/OWNER/REPO/PATH for a Space or "
    "hf://datasets/OWNER/REPO/PATH for a dataset, each optionally followed by @REVISION (a "
    "branch, tag, commit or refs/pr/N); OWNER and REPO use letters, digits, '-', '_' and '.'"
)
"""The Hub spec forms ``parse_hub_spec`` accepts, for error messages."""


def parse_hub_spec(spec: str) -> HubFile:
    """Parses ``hf://[spaces/|datasets/]OWNER/REPO/PATH[@REVISION]``.

    The revision follows the last ``@``, so it may contain ``/`` (``refs/pr/1``).

    Raises:
        CheckpointError: The spec is malformed; the message lists the accepted forms.
    """
    rest = spec.removeprefix("hf://")
    repo_type = "model"
    for prefix, kind in REPO_TYPE_PREFIXES.items():
        if rest.startswith(prefix):
            rest, repo_type = rest.removeprefix(prefix), kind
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(
            f"cannot read the Hub spec {spec!r}: it needs OWNER/REPO/PATH. Write {SPEC_FORMS}."
        )
    file = HubFile("/".join(parts[:2]), "/".join(parts[2:]), repo_type, revision)
    problem = hub_file_problem(file)
    if problem:
        raise CheckpointError(f"cannot read the Hub spec {spec!r}: {problem}. Write {SPEC_FORMS}.")
    return file


def hub_file_problem(file: HubFile) -> str | None:
    """What makes ``file`` impossible to ask the Hub for, or ``None`` if it is well formed."""
    try:
        validate_repo_id(file.repo_id)
    except HFValidationError:
        return f"{file.repo_id!r} is not a valid OWNER/REPO name"
    segments = file.filename.split("/")
    if "\\" in file.filename or not all(segments) or {".", ".."} & set(segments):
        return f"the path {file.filename!r} must be relative, without '.', '..' or empty parts"
    if file.revision is not None and not _valid_revision(file.revision):
        return f"the revision {file.revision!r} after '@' is not a branch, tag or commit name"
    return None


def _valid_revision(revision: str) -> bool:
    """Whether ``revision`` can name a git ref or commit (``refs/pr/1`` included)."""
    segments = revision.split("/")
    return (
        all(segments)
        and ".." not in revision
        and not any(c.isspace() or c in "~^:?*[\\" or ord(c) < 32 for c in revision)
    )


def hub_download(file: HubFile, force: bool = False) -> Path:
    """Finds ``file`` in the cache or downloads it there (with a progress bar).

    Concurrent requests for the same file, from threads or processes, download it
    once: ``hf_hub_download`` holds a lock file per blob.

    Args:
        file: What to fetch.
        force: Download it again even if the cache has it (replacing a damaged copy).

    Returns:
        The file's path inside the cache.

    Raises:
        CheckpointError: ``file`` is malformed (bad repository name, path or revision).
        HubError: The file could not be had; the message says why and what to do.
    """
    problem = hub_file_problem(file)
    if problem:
        raise CheckpointError(f"cannot ask the Hub for {file}: {problem}. Write {SPEC_FORMS}.")
    offline = is_offline()
    if force and offline:
        raise _explained(
            f"cannot download {file} again: HF_HUB_OFFLINE=1 forbids network access",
            "Unset HF_HUB_OFFLINE to use --force.",
        )
    if force or (not offline and _cached(file) is None):
        logger.info("downloading %s from %s into %s", file, hub_endpoint(), hub_cache_dir())
    # TODO(#3): with no cached copy, huggingface_hub retries an unreachable Hub for about 25 s
    # (minutes if packets are dropped) before failing, and it reads HF_HUB_OFFLINE for its own
    # header lookup only at import; neither can be tuned through hf_hub_download's arguments.
    try:
        path = hf_hub_download(
            file.repo_id,
            file.filename,
            repo_type=file.repo_type,
            revision=file.revision,
            cache_dir=hub_cache_dir(),
            endpoint=hub_endpoint(),
            local_files_only=offline,
            force_download=force,
            library_name="adaclip",
        )
    except (OSError, ValueError, httpx2.HTTPError) as err:
        raise _explained(*explain_hub_failure(err, file, offline)) from err
    logger.debug("%s is at %s", file, path)
    return Path(path)


def _explained(reason: str, advice: str, kind: type[CheckpointError] = HubError) -> CheckpointError:
    """An error of ``kind`` whose ``reason`` (what happened) can be listed without its advice."""
    return kind(f"{reason}. {advice}", reason=reason)


def explain_hub_failure(err: Exception, file: HubFile, offline: bool) -> tuple[str, str]:
    """Turns a huggingface_hub or network exception into what happened and what to do.

    Returns:
        ``(reason, advice)``: one sentence each, without the final full stop on ``reason``.
    """
    endpoint = hub_endpoint()
    local = "or pass a local file (--checkpoint PATH; --backbone-weights PATH for the backbone)."
    if isinstance(err, LocalEntryNotFoundError) and offline:
        return (
            f"{file} is not in the cache ({hub_cache_dir()}) and HF_HUB_OFFLINE=1 forbids "
            "downloading it",
            _offline_advice(),
        )
    if isinstance(err, LocalEntryNotFoundError):
        if _status(err.__cause__):
            return _http_failure(_status(err.__cause__), file, local)
        return (
            f"could not reach the Hub at {endpoint} for {file} ({_network_reason(err.__cause__)}) "
            "and it is not in the cache",
            "Check the connection or HF_ENDPOINT and try again, pre-fetch it with "
            f"`python -m adaclip download` elsewhere, {local}",
        )
    if isinstance(err, GatedRepoError):
        return (
            f"{file.repo_type} repo {file.repo_id} is gated",
            f"Accept its terms on the Hub and log in (HF_TOKEN), {local}",
        )
    if isinstance(err, RepositoryNotFoundError):
        return (
            f"{file.repo_type} repo {file.repo_id} was not found on {endpoint} (or is private)",
            "Check the name; Spaces are hf://spaces/OWNER/REPO/PATH and datasets "
            f"hf://datasets/OWNER/REPO/PATH; log in (HF_TOKEN) for private repos, {local}",
        )
    if isinstance(err, RevisionNotFoundError):
        return (
            f"revision {file.revision!r} does not exist in {file.repo_type} repo {file.repo_id}",
            f"Check the branch, tag or commit after '@', {local}",
        )
    if isinstance(err, RemoteEntryNotFoundError):
        return (
            f"{file.repo_type} repo {file.repo_id} has no file {file.filename!r} at revision "
            f"{file.revision or 'main'}",
            f"Check the path, {local}",
        )
    return _transfer_failure(err, file, local)


def _offline_advice() -> str:
    """What to do when HF_HUB_OFFLINE=1 and a file is not cached."""
    return (
        "Unset HF_HUB_OFFLINE to download it, copy in a cache filled by `python -m adaclip "
        "download` on a machine with network (same HF_HOME), or pass a local file instead "
        "(--checkpoint PATH; --backbone-weights PATH for the backbone)."
    )


def _status(err: BaseException | None) -> int | None:
    """The HTTP status the Hub answered with, if ``err`` is an HTTP error response."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return err.response.status_code
    return None


def _http_failure(status: int, file: HubFile, local: str) -> tuple[str, str]:
    """Explains an HTTP error status: the Hub was reached but refused or failed."""
    reason = f"the Hub at {hub_endpoint()} answered HTTP {status}"
    if status >= 500:
        return (
            f"{reason} (a server error) for {file}",
            f"Try again later, use the mirror (another repo with the same file) {local}",
        )
    if status == 429:
        return f"{reason} (too many requests) for {file}", f"Wait a while and try again, {local}"
    if status in (401, 403):
        return (
            f"{reason} (access denied) for {file}",
            f"Log in (HF_TOKEN) with an account that may read it, {local}",
        )
    return f"{reason} for {file}", f"Check the spec and HF_ENDPOINT, {local}"


def _transfer_failure(err: Exception, file: HubFile, local: str) -> tuple[str, str]:
    """Explains failures during the transfer itself: server errors, cuts, timeouts, full disks."""
    if _status(err):
        return _http_failure(_status(err), file, local)
    if isinstance(err, (httpx2.HTTPError, FileMetadataError)) or "Consistency check" in str(err):
        return (
            f"the download of {file} failed ({_network_reason(err)}); nothing of it was kept",
            f"Try again, set HF_HUB_OFFLINE=1 to use only cached files, {local}",
        )
    if isinstance(err, HFValidationError):
        return f"{file} does not name a valid Hub repository: {err}", f"Write {SPEC_FORMS}."
    return (
        f"could not store {file} in the cache {hub_cache_dir()}: {err}",
        "Check its free space and access rights.",
    )


def _network_reason(err: BaseException | None) -> str:
    """A short phrase for why a transfer failed."""
    if isinstance(err, httpx2.TimeoutException):
        return "the connection timed out"
    if isinstance(err, httpx2.ConnectError):
        return "could not connect"
    if isinstance(err, httpx2.RemoteProtocolError):
        return "the server closed the connection before the whole file arrived"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return f"the server answered HTTP {err.response.status_code}"
    if isinstance(err, FileMetadataError):
        return "the server does not look like a Hugging Face Hub endpoint"
    if err is not None and "Consistency check" in str(err):
        return "the file arrived truncated: " + str(err).split(" (", 1)[0]
    return str(err) if err is not None else "unknown network error"


def resolve_checkpoint(spec: str | Path, force: bool = False) -> Path:
    """Turns a checkpoint spec into a local file, downloading it on first use.

    ``hf://`` files are read once here and refused unless their key names are an
    AdaCLIP checkpoint's, so a wrong or damaged download is named as such.

    Args:
        spec: A published name (see ``CHECKPOINTS``), ``hf://[spaces/|datasets/]OWNER/REPO/PATH
            [@REVISION]`` or the path of a local file ending in one of ``CHECKPOINT_SUFFIXES``.
        force: Download a Hub file again even if the cache has a copy.

    Returns:
        The local file; Hub files live in the Hugging Face cache.

    Raises:
        CheckpointError: The spec names nothing usable, a published file fails its checksum
            or a Hub file is not an AdaCLIP checkpoint.
        HubError: The Hub could not deliver the file.
    """
    text = str(spec)
    if text in CHECKPOINTS:
        return fetch_published(CHECKPOINTS[text], force=force)
    if text.startswith("hf://"):
        return _fetch_hub_checkpoint(parse_hub_spec(text), force)[0]
    path = Path(text).expanduser()
    if path.is_file():
        return checked_suffix(path, text)
    raise CheckpointError(
        f"checkpoint {text!r} is not a published name ({', '.join(CHECKPOINTS)}), not an hf:// "
        "spec and not an existing file. Give one of those; `python -m adaclip checkpoints` "
        "lists the published ones."
    )


def fetch_checkpoint(spec: str | Path, force: bool = False) -> tuple[Path, dict[str, torch.Tensor]]:
    """Resolves ``spec`` like ``resolve_checkpoint``, then reads it and checks its key names.

    This is what ``python -m adaclip download`` runs for each ``--checkpoint``.

    Returns:
        The local file and its tensors (keys with the ``clip_model.`` prefix).

    Raises:
        CheckpointError: As ``resolve_checkpoint``, or the file is not an AdaCLIP checkpoint.
        HubError: The Hub could not deliver the file.
    """
    text = str(spec)
    if text.startswith("hf://"):
        return _fetch_hub_checkpoint(parse_hub_spec(text), force)
    path = resolve_checkpoint(text, force=force)
    state = read_state(path)
    check_adaclip_names(state, text)
    return path, state


def _fetch_hub_checkpoint(file: HubFile, force: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """Downloads (or finds cached) an ``hf://`` checkpoint, reads it and checks its key names."""
    checked_suffix(Path(file.filename), str(file))
    was_cached = not force and _cached(file) is not None
    path = hub_download(file, force=force)
    source = f"{file} (cached at {path})"
    try:
        state = read_state(path, source=source)
    except CheckpointError as err:
        if not was_cached:
            raise
        raise CheckpointError(
            f"{err} If the cached copy is damaged, fetch it again with "
            f"`python -m adaclip download --force --checkpoint {file}`."
        ) from err
    check_adaclip_names(state, source)
    return path, state


def fetch_published(entry: PublishedCheckpoint, force: bool = False) -> Path:
    """Gets a published checkpoint from the Space, else the mirror, and checks its sha256.

    A cached copy with the published digest is used without asking the Hub anything:
    the bytes are pinned, so there is nothing newer to look for.

    Args:
        entry: The checkpoint to get.
        force: Download it again even if an intact copy is cached.

    Raises:
        CheckpointError: Neither source gave the published bytes (a checksum was wrong).
        HubError: Neither source could deliver the file, or HF_HUB_OFFLINE=1 and none is cached.
    """
    cached = None if force else _verified_cached(entry)
    if cached is not None:
        return cached
    if is_offline():
        raise _explained(
            f"the published checkpoint {entry.name!r} has no intact copy in the cache "
            f"({hub_cache_dir()}) and HF_HUB_OFFLINE=1 forbids downloading it",
            _offline_advice(),
        )
    problems: list[CheckpointError] = []
    for file in entry.sources:
        try:
            path = hub_download(file, force=force)
            verify_sha256(path, entry.sha256, file)
        except CheckpointError as err:
            if file != entry.sources[-1]:
                logger.warning("%s; trying %s next", err.reason, entry.sources[-1])
            problems.append(err)
            continue
        return path
    raise _unavailable(entry, problems)


def _verified_cached(entry: PublishedCheckpoint) -> Path | None:
    """A cached copy of ``entry`` with the published digest; bad copies are deleted."""
    for file in entry.sources:
        path = _cached(file)
        if path is None:
            continue
        try:
            verify_sha256(path, entry.sha256, file)
        except CheckpointError as err:
            logger.warning("cached copy refused: %s", err.reason)
            continue
        return path
    return None


def _unavailable(entry: PublishedCheckpoint, problems: list[CheckpointError]) -> CheckpointError:
    """The error for a published checkpoint that no source delivered intact."""
    details = "\n".join(f"  - {err.reason}" for err in problems)
    urls = " or ".join(file.url(hub_endpoint()) for file in entry.sources)
    message = (
        f"could not get the published checkpoint {entry.name!r} from the Space or the mirror:\n"
        f"{details}\nTo use it anyway, download {urls} by hand, check that its sha256 is "
        f"{entry.sha256} and pass the file's path; or fetch it with `python -m adaclip download "
        f"--checkpoint {entry.name}` where the Hub is reachable and run with HF_HUB_OFFLINE=1."
    )
    if all(isinstance(err, HubError) for err in problems):
        return HubError(message)
    return CheckpointError(message)


def verify_sha256(path: Path, expected: str, file: HubFile) -> None:
    """Checks a downloaded file's digest; a mismatch removes it from the cache.

    Raises:
        CheckpointError: The digest differs; the message gives both.
    """
    try:
        got = file_sha256(path)
    except OSError as err:
        raise CheckpointError(f"cannot read {path} to check its sha256: {err}.") from err
    if got == expected:
        logger.info("%s: sha256 verified (%s)", file, path)
        return
    _forget_cached(path)
    raise _explained(
        f"{file} failed its checksum: sha256 {got} differs from the published {expected}",
        "The file was removed from the cache and not used. Try again later, or download the "
        "file yourself, check its sha256 and pass it as a local file.",
        CheckpointError,
    )


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _forget_cached(path: Path) -> None:
    """Deletes a cached file and the blob its snapshot link points to."""
    blob = path.resolve()
    try:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("could not delete the rejected file %s: %s; delete it by hand", blob, err)


def cached_checkpoint(entry: PublishedCheckpoint) -> Path | None:
    """Where a published checkpoint already lies in the cache, without any network call."""
    for file in entry.sources:
        path = _cached(file)
        if path is not None:
            return path
    return None


def cached_status(entry: PublishedCheckpoint) -> str:
    """Whether a published checkpoint is cached intact, as shown by ``adaclip checkpoints``.

    Reads and hashes each cached copy (about 0.1 s for 43 MB) but changes nothing and
    makes no network call.

    Returns:
        ``yes`` for a copy with the published sha256, ``no`` for none, else what is wrong.
    """
    status = "no"
    for file in entry.sources:
        path = _cached(file)
        if path is None:
            continue
        try:
            if file_sha256(path) == entry.sha256:
                return "yes"
        except OSError as err:
            status = f"unreadable ({err.strerror or err}; re-downloaded on next use)"
            continue
        status = "corrupt (sha256 mismatch; re-downloaded on next use)"
    return status


def _cached(file: HubFile) -> Path | None:
    """The cached copy of ``file`` at its revision, or ``None``."""
    found = try_to_load_from_cache(
        file.repo_id,
        file.filename,
        cache_dir=hub_cache_dir(),
        revision=file.revision,
        repo_type=file.repo_type,
    )
    return Path(found) if isinstance(found, str) else None


def backbone_files(name: str, pretrained: str) -> list[HubFile]:
    """The Hub files open_clip would load for ``name`` with tag ``pretrained``, best first.

    Raises:
        CheckpointError: open_clip knows no Hub weights for that model and tag.
    """
    hub = BACKBONE_HUB.get((name, pretrained)) or _open_clip_hub(name, pretrained)
    repo_id, _, filename = hub.rpartition("/")  # "org/name/" has no file: open_clip's defaults
    names = _safe_first(filename) if filename else list(OPEN_CLIP_WEIGHTS)
    return [HubFile(repo_id, n) for n in names]


def _open_clip_hub(name: str, pretrained: str) -> str:
    """open_clip's Hub repo for a backbone that :data:`BACKBONE_HUB` does not list.

    open_clip is imported only here: with torchvision it costs about 220 MB of memory,
    which the published backbone never pays.
    """
    import open_clip

    hub = open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub", "")
    if not hub:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise CheckpointError(
            f"open_clip has no Hub weights for backbone {name!r} with tag {pretrained!r} (its "
            f"tags: {tags}). Pick a listed tag or pass --backbone-weights with a local file."
        )
    return hub


def _safe_first(filename: str) -> list[str]:
    """A ``.safetensors`` twin first (as open_clip tries it), then the file itself."""
    stem, suffix = os.path.splitext(filename)
    if suffix in (".bin", ".pth"):
        return [stem + ".safetensors", filename]
    return [filename]


def fetch_backbone(name: str, pretrained: str) -> Path:
    """Downloads (or finds cached) the backbone weights open_clip names for ``name``/``pretrained``.

    Tries the ``.safetensors`` file first, then the pickle, as open_clip itself does. A
    cached copy is used without asking the Hub: released weights do not change.

    Returns:
        The local weights file.

    Raises:
        CheckpointError: The model or tag has no Hub weights.
        HubError: The Hub could not deliver any of its weight files.
    """
    cached = cached_backbone(name, pretrained)
    if cached is not None:
        return cached
    # TODO(#3): no published sha256 pins the backbone; it relies on the Hub's ETag and size.
    files = backbone_files(name, pretrained)
    for file in files[:-1]:
        try:
            return hub_download(file)
        except HubError as err:
            if not _absent(err):
                raise
            logger.debug("%s is not available (%s); trying the next file", file, err)
    return hub_download(files[-1])


def _absent(err: HubError) -> bool:
    """Whether a download failed only because that file does not exist (or is not cached)."""
    cause = err.__cause__
    return isinstance(cause, RemoteEntryNotFoundError) or (
        isinstance(cause, LocalEntryNotFoundError) and is_offline()
    )


def cached_backbone(name: str, pretrained: str) -> Path | None:
    """Where the backbone weights already lie in the cache, without any network call."""
    for file in backbone_files(name, pretrained):
        path = _cached(file)
        if path is not None:
            return path
    return None
