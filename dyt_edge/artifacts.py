"""Exported artifacts on disk: the ``dyt_edge.json`` manifest, where artifacts go, and how later
commands find them. Torch-free (stdlib only), so runtimes, ``bench`` and ``build`` can read an
artifact without importing the exporters or torch.

An *artifact directory* holds the exported model file(s) and a manifest::

    dyt-edge-out/<checkpoint stem>/
        model.onnx            # --format onnx (and the validated source of every other format)
        model.xml, model.bin  # --format openvino
        dyt_edge.json         # the manifest (written last)

The manifest's schema is ``docs/manifest.md``; code reads it through the typed view
:attr:`Artifact.info` (:mod:`dyt_edge.manifest`).

Two ways to write one (:func:`dyt_edge.output_files.output_target` tells which ``-o`` asks
for):

* ``-o DIR`` (or the default directory): the directory is the artifact and is replaced as a
  whole: it is built beside its final place and swapped in (:func:`staged_directory`), so a
  reader sees the old artifact or the new one, never a mix, and a failed export leaves nothing
  behind.
* ``-o DIR/NAME.onnx`` (``NAME.xml`` for OpenVINO): only the artifact's own files are written
  into DIR, which may hold other files that are not ours (:mod:`dyt_edge.output_files`); such a
  directory is never replaced as a whole afterwards (``-o DIR`` is refused).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from .errors import ArtifactError
from .manifest import Manifest, header, schema_version
from .manifest import preprocessing_of  # noqa: F401 - read as artifacts.preprocessing_of
from .reports import to_json

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST_NAME = "dyt_edge.json"
DEFAULT_ROOT = "dyt-edge-out"
KINDS = ("onnx", "openvino", "tensorrt")
"""Artifact kinds a manifest's ``files`` may name as a model (``openvino_weights`` is the .bin,
``tensorrt_metadata`` the engine's ``engine.json``)."""
MODEL_FILE_SUFFIXES = (".onnx", ".xml", ".bin", ".engine", ".plan")
"""The suffixes of an artifact's model files (ONNX, OpenVINO IR and its weights, TensorRT
engine)."""
STAGING_PREFIX = ".dyt-edge-staging-"
RETIRED_PREFIX = ".dyt-edge-retired-"


@dataclass(frozen=True)
class Artifact:
    """An artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @functools.cached_property
    def info(self) -> Manifest:
        """The typed view of :attr:`manifest` (checked: a malformed manifest raises
        :class:`ArtifactError`), read once per artifact: an artifact's manifest is not changed
        in place (a build writes a new one)."""
        return Manifest.from_dict(self.manifest, f"the manifest of {self.path}")

    @property
    def parent_export(self) -> Optional[Path]:
        """The export a built artifact was built from (its ``build.parent``), None for an export
        or a build that does not record it."""
        build = self.info.build
        return (self.path / build.parent).resolve() if build and build.parent else None

    @property
    def format(self) -> str:
        return self.info.format

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.info.files if k in KINDS)

    def file(self, kind: Optional[str] = None) -> Path:
        """The model file of ``kind`` (default: the format the artifact was exported as)."""
        info = self.info
        kind = kind or info.format
        if kind not in info.files:
            raise ArtifactError(f"artifact {self.path} has no {kind} model",
                                f"it holds: {', '.join(self.kinds) or 'nothing'}; "
                                f"re-export with --format {kind}")
        return self.path / info.files[kind].path

    def summary(self) -> str:
        info = self.info
        return (f"{self.path} ({'+'.join(self.kinds) or info.format}, {info.variant or '?'}, "
                f"dispatch {info.dispatch.mode}, created {info.created or '?'})")


# -- where artifacts go -------------------------------------------------------------------------

def default_output_dir(checkpoint: PathLike, root: PathLike = DEFAULT_ROOT) -> Path:
    """``<root>/<checkpoint stem>/`` (``dyt-edge-out/checkpoint-9/`` for ``checkpoint-9.pth``)."""
    return Path(root) / Path(checkpoint).stem


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the one copy: checkpoints, artifacts'
    files, builds and baselines are all fingerprinted with it)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def new_manifest(**fields: Any) -> dict[str, Any]:
    """A manifest with the header keys filled in; ``fields`` are added as given."""
    return {**header(utc_now()), **fields}


# -- reading ------------------------------------------------------------------------------------

def read_manifest(directory: PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{directory} is not a dyt-edge artifact (no {MANIFEST_NAME})",
                            "pass the directory `dyt-edge export` wrote") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})", "re-export the model") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a dyt-edge manifest", "re-export the model")
    schema_version(manifest, str(path))
    return manifest


def load_artifact(path: PathLike) -> Artifact:
    """An artifact from its directory, or from a file inside it (``model.onnx``, ...)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact {p} does not exist",
                            "run `dyt-edge export CKPT` first, or pass an existing path")
    directory = p if p.is_dir() else p.parent
    return Artifact(directory, read_manifest(directory))


def find_artifacts(root: PathLike = DEFAULT_ROOT, kind: Optional[str] = None) -> list[Artifact]:
    """Every readable artifact under ``root`` (directories up to two levels deep), newest first.

    Unreadable or foreign manifests are skipped; ``kind`` keeps artifacts holding that model.
    """
    base = Path(root)
    found: list[Artifact] = []
    if not base.is_dir():
        return found
    candidates = [base, *base.glob("*"), *base.glob("*/*")]
    for d in candidates:
        if not d.is_dir() or d.name.startswith((STAGING_PREFIX, RETIRED_PREFIX)):
            continue
        if not (d / MANIFEST_NAME).is_file():
            continue
        try:
            art = Artifact(d, read_manifest(d))
            info = art.info
        except ArtifactError:
            continue
        if info.is_baseline:  # bench's complete-model baselines are not exports
            continue
        if kind is None or kind in art.kinds:
            found.append(art)
    found.sort(key=lambda a: (str(a.info.created or ""),
                              (a.path / MANIFEST_NAME).stat().st_mtime), reverse=True)
    return found


def find_latest_artifact(root: PathLike = DEFAULT_ROOT, kind: Optional[str] = None) -> Artifact:
    """The most recent export under ``root`` (by its manifest's ``created`` time).

    Callers should tell the user which one was picked (:meth:`Artifact.summary`).
    """
    found = find_artifacts(root, kind)
    if not found:
        what = f"{kind} artifact" if kind else "artifact"
        raise ArtifactError(f"no {what} found under {root}/",
                            "run `dyt-edge export CKPT"
                            + (f" --format {kind}" if kind else "") + "` first, or pass a path")
    return found[0]


def resolve_artifact(path: Optional[PathLike] = None, kind: Optional[str] = None,
                     root: PathLike = DEFAULT_ROOT) -> tuple[Artifact, bool]:
    """The artifact at ``path``, or the latest one under ``root`` when ``path`` is None.

    Returns ``(artifact, picked)``; ``picked`` is True when it was chosen automatically, so the
    caller can say so ("using the most recent export: ...").
    """
    if path is not None:
        art = load_artifact(path)
        if kind is not None:
            art.file(kind)  # raises a clear error when the kind is missing
        return art, False
    return find_latest_artifact(root, kind), True


# -- writing ------------------------------------------------------------------------------------

def atomic_write_bytes(path: PathLike, data: Union[bytes, bytearray, memoryview, list]) -> int:
    """Write ``data`` (bytes, or a list of byte chunks) to a temporary name beside ``path``,
    fsync, then ``os.replace`` it into place. Returns the size written."""
    target = Path(path)
    chunks = data if isinstance(data, list) else [data]
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    size = 0
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; use the user's umask
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


def write_manifest(directory: PathLike, manifest: Mapping[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(path, to_json(manifest).encode("utf-8"))
    return path


def check_output_dir(target: PathLike, model_name: Optional[str] = None) -> Path:
    """Refuse an output directory we must not (or cannot) replace, before any work is done.

    Allowed: a path that does not exist (its parents are created), an empty directory, or a
    directory holding a dyt-edge manifest (a previous export, replaced as a whole) unless that
    artifact was written beside other files (``-o DIR/NAME.onnx``). ``model_name``: the file
    name the command could write instead (``-o DIR/model.onnx``), offered in the hint when the
    directory holds other files.
    """
    t = Path(target)
    if t.suffix in (".onnx", ".xml", ".bin", ".json") and not t.is_dir():
        raise ArtifactError(f"-o {t} looks like a file name; -o takes a directory",
                            f"pass -o {t.with_suffix('')} (the model is written inside it)")
    if t.exists():
        if not t.is_dir():
            raise ArtifactError(f"output path {t} exists and is not a directory",
                                "pass -o with a directory path")
        if any(t.iterdir()) and not (t / MANIFEST_NAME).is_file():
            raise ArtifactError(f"output directory {t} is not empty and holds no "
                                f"{MANIFEST_NAME} (not a dyt-edge artifact); refusing to "
                                "replace it", "pass -o with a new or empty directory"
                                + (f", or -o {t / model_name} to write the model beside its "
                                   "files" if model_name else ""))
        _refuse_shared_directory(t)
    probe = existing_ancestor(t, "pass -o with a directory path")
    parent = probe if probe != t else t.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"output path {t} is not writable ({parent} denies writing)",
                            "pass -o with a directory you can write to")
    return t


@contextlib.contextmanager
def staged_directory(target: PathLike) -> Iterator[Path]:
    """Build an artifact directory beside ``target``, then swap it in.

    Yields an empty staging directory (a hidden sibling of ``target``). When the block exits
    normally the staging directory replaces ``target``: an existing ``target`` is renamed away,
    the staging directory renamed into place, then the old one deleted (a crash between the two
    renames leaves the old artifact under a hidden ``.dyt-edge-retired-*`` name, cleaned up by
    the next export). When the block raises, the staging directory is deleted, as are any
    parent directories created for it, and ``target`` is untouched.
    """
    t = Path(target)
    check_output_dir(t)
    created = create_missing_dirs(t.parent)
    remove_leftovers(t.parent, (f"{STAGING_PREFIX}{t.name}-*", f"{RETIRED_PREFIX}{t.name}-*"))
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{t.name}-", dir=t.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
        yield staging
        retired = None
        if t.exists():
            check_output_dir(t)  # still ours? (it may have changed during a long export)
            retired = t.parent / f"{RETIRED_PREFIX}{t.name}-{uuid.uuid4().hex[:8]}"
            os.rename(t, retired)
        try:
            os.rename(staging, t)
        except BaseException:
            if retired is not None:
                os.rename(retired, t)
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created_dirs(created)
        raise


def _refuse_shared_directory(t: Path) -> None:
    """A directory written with ``-o DIR/NAME.onnx`` may hold the user's own files: never
    replace it as a whole."""
    # Only the ``output`` record is read: a manifest the typed view would refuse for another
    # reason (an old or hand-edited one) must not let the directory be replaced.
    try:
        output = read_manifest(t).get("output")
    except ArtifactError:
        return
    if isinstance(output, Mapping) and output.get("mode") == "file":
        name = output.get("name") or "model.onnx"
        raise ArtifactError(
            f"{t} holds a dyt-edge artifact written beside other files (-o {t / name}); "
            "replacing the directory as a whole could delete them",
            f"pass -o {t / name} to replace only the artifact's own files")


def existing_ancestor(path: PathLike, hint: str) -> Path:
    """``path`` itself or its nearest existing ancestor; an :class:`ArtifactError` (with
    ``hint``) when that is a file, so no directory can be created there."""
    t = probe = Path(path)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ArtifactError(f"cannot create {t}: {probe} is a file", hint)
    return probe


def create_missing_dirs(directory: PathLike) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, innermost first
    (for :func:`remove_created_dirs`)."""
    created: list[Path] = []
    p = Path(directory)
    while not p.exists():
        created.append(p)
        p = p.parent
    for d in reversed(created):
        d.mkdir()
    return created


def remove_created_dirs(created: list[Path]) -> None:
    """Undo :func:`create_missing_dirs`: remove the directories it made, innermost first, each
    only if still empty."""
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(directory: Path, patterns: "tuple[str, ...]") -> None:
    """Remove the entries of ``directory`` matching ``patterns`` (glob) that a killed export
    left behind: staging directories, renamed-away files or directories. Not a running
    export's: only those older than an hour."""
    import time

    for pattern in patterns:
        for q in directory.glob(pattern):
            with contextlib.suppress(OSError):
                if time.time() - q.lstat().st_mtime > 3600:
                    if q.is_dir() and not q.is_symlink():
                        shutil.rmtree(q, ignore_errors=True)
                    else:
                        q.unlink()
