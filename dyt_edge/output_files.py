"""``-o DIR/NAME.onnx``: an artifact's files written into a directory that may hold other files.

``-o DIR`` makes the directory the artifact, replaced as a whole
(:func:`dyt_edge.artifacts.staged_directory`). ``-o DIR/NAME.onnx`` (``NAME.xml`` for OpenVINO)
writes only the artifact's own files into DIR and leaves everything else there alone
(:func:`staged_files`): they are built in a hidden staging directory inside DIR and renamed into
place one by one, the manifest last. An existing file of one of those names is replaced only
when it belongs to the dyt-edge artifact already in DIR, and that artifact must have the same
model name (one artifact per directory). Files of the previous artifact that the new one does
not have are removed after the new manifest is in place (only when unchanged). Such a directory
is never replaced as a whole afterwards (:func:`dyt_edge.artifacts.check_output_dir` refuses
it). Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from .artifacts import (MODEL_FILE_SUFFIXES, RETIRED_PREFIX, STAGING_PREFIX, KINDS,
                        MANIFEST_NAME, ArtifactError, PathLike, create_missing_dirs,
                        existing_ancestor, file_sha256, read_manifest, remove_created_dirs,
                        remove_leftovers)
from .errors import UsageError
from .manifest import FileEntry, Manifest

OUTPUT_FILE_SUFFIXES = (*MODEL_FILE_SUFFIXES, ".json")
"""Suffixes that make ``-o`` a file name rather than a directory (unless it is an existing
directory)."""


@dataclass(frozen=True)
class OutputTarget:
    """Where an export goes: ``directory``, replaced as a whole when ``model_name`` is None
    (``-o DIR``), otherwise the artifact's files written into it beside whatever else it holds,
    the model named ``model_name`` (``-o DIR/NAME.onnx``)."""

    directory: Path
    model_name: Optional[str] = None

    @property
    def is_file(self) -> bool:
        return self.model_name is not None

    @property
    def stem(self) -> str:
        """The name every file of the artifact shares (``model`` for a directory target)."""
        return Path(self.model_name).stem if self.model_name else "model"

    def file_names(self, defaults: "list[tuple[str, str]] | tuple[tuple[str, str], ...]"
                   ) -> dict[str, str]:
        """kind -> file name, from (kind, default name) pairs whose first is the model: the
        model gets the -o name, the others its stem and their own suffix (``net.xml`` ->
        ``net.bin``, ``net.onnx``)."""
        names = {}
        for i, (kind, default) in enumerate(defaults):
            if i == 0 and self.model_name:
                names[kind] = self.model_name
            else:
                names[kind] = self.stem + Path(default).suffix
        return names

    def record(self) -> dict[str, Any]:
        """The manifest's ``output`` section."""
        if self.model_name is None:
            return {"mode": "directory"}
        return {"mode": "file", "name": self.model_name}


def output_target(output: PathLike, model_suffix: str,
                  refuse: Optional[Mapping[str, tuple[str, str]]] = None) -> OutputTarget:
    """What ``-o`` asks for: a directory, or (a path ending in one of
    :data:`OUTPUT_FILE_SUFFIXES`, not an existing directory) a model file named inside one.

    ``model_suffix`` is the suffix the format writes (``.onnx``); any other model-file suffix is
    refused, with ``refuse[suffix]`` = (why, fix) when given.
    """
    p = Path(output)
    suffix = p.suffix.lower()
    if p.is_dir() or suffix not in OUTPUT_FILE_SUFFIXES:
        return OutputTarget(p)
    if suffix != model_suffix.lower():
        why, fix = (refuse or {}).get(
            suffix, (f"this export writes a {model_suffix} model",
                     f"pass -o {p.with_suffix(model_suffix)}, or a directory"))
        raise UsageError(f"-o {p}: {why}", fix)
    return OutputTarget(p.parent if str(p.parent) else Path("."), p.name)


def _previous_files(directory: Path) -> Optional[Mapping[str, FileEntry]]:
    """The ``files`` of the artifact already in ``directory`` (None when there is none);
    refuses a manifest that cannot be read (it is not ours to overwrite)."""
    path = directory / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return Manifest.from_dict(read_manifest(directory), "it").files
    except ArtifactError as exc:
        raise ArtifactError(f"{path} is not a readable dyt-edge manifest ({exc.message}); "
                            "refusing to overwrite it",
                            "move it away, or pass -o in another directory") from None


def _listed(files: Optional[Mapping[str, FileEntry]]) -> dict[str, FileEntry]:
    """file name -> its ``files`` entry, for the artifact's plain files (not subdirectories)."""
    return {e.path: e for e in (files or {}).values() if "/" not in e.path and "\\" not in e.path}


def check_output_files(directory: PathLike, names: "list[str] | tuple[str, ...]",
                       stem: str) -> list[str]:
    """Refuse writing the files ``names`` into ``directory`` when that could destroy something
    not ours; return notes on what an existing artifact there loses.

    Refused: a path through a file, a directory that is not writable, a file of one of those
    names that is not listed by the directory's dyt-edge manifest (the user's own), a manifest
    that cannot be read, and an artifact there whose model has another name than ``stem``
    (a directory holds one artifact).
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ArtifactError(f"cannot write into {d}: it is a file, not a directory",
                            "pass -o DIR/NAME.onnx with DIR a directory")
    probe = existing_ancestor(d, "pass -o with a path inside a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArtifactError(f"output path {d} is not writable ({probe} denies writing)",
                            "pass -o with a directory you can write to")
    previous = _previous_files(d) if d.is_dir() else None
    listed = _listed(previous)
    for name in names:
        p = d / name
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise ArtifactError(f"{p} exists and is not a regular file; refusing to replace it",
                                "move it away, or pass -o with another file name")
        if p.exists() and name not in listed:
            raise ArtifactError(f"{p} already exists and is not part of a dyt-edge artifact; "
                                "refusing to overwrite it",
                                "move it away, or pass -o with another file name or a new "
                                "directory")
    notes: list[str] = []
    if previous is not None:
        models = [entry.path for kind, entry in previous.items() if kind in KINDS]
        others = sorted({Path(m).stem for m in models} - {stem})
        if others:
            model = next(m for m in models if Path(m).stem == others[0])
            raise ArtifactError(
                f"{d} already holds a dyt-edge artifact ({model}); a directory holds one "
                "artifact", f"pass -o {d / model} to replace it, or another directory")
        gone = sorted(set(listed) - set(names))
        notes.append(f"replaced the dyt-edge artifact that was in {d}"
                     + (f" (its {', '.join(gone)} removed)" if gone else ""))
    return notes


@contextlib.contextmanager
def staged_files(directory: PathLike, names: "list[str] | tuple[str, ...]",
                 stem: str) -> Iterator[Path]:
    """Write an artifact's files into ``directory`` without touching anything else in it.

    Yields an empty staging directory (hidden, inside ``directory``) to write the model files
    and the manifest into. When the block exits normally, :func:`check_output_files` runs again
    (the directory may have changed during a long export), then every staged file is renamed
    into place, an existing file of that name first renamed away (hidden), the manifest last;
    then the renamed-away files and the previous artifact's files that the new one does not
    have are deleted. When the block raises, or a rename fails, the staging directory and any
    directories created for it are deleted and the files renamed away are put back: the
    previous artifact stays as it was.
    """
    d = Path(directory)
    check_output_files(d, names, stem)
    created = create_missing_dirs(d)
    remove_leftovers(d, (f"{STAGING_PREFIX}{stem}-*", f"{RETIRED_PREFIX}{stem}.*-*"))
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{stem}-", dir=d))
    try:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise ArtifactError(f"internal error: no {MANIFEST_NAME} was staged",
                                "re-run with --debug and report it")
        written = sorted(q.name for q in staging.iterdir() if q.name != MANIFEST_NAME)
        check_output_files(d, written, stem)
        previous = _listed(_previous_files(d))
        _commit_files(d, staging, written)
        for name, entry in previous.items():  # the old artifact's files the new one lacks
            old = d / name
            if name in written or not old.is_file() or old.is_symlink():
                continue
            want = entry.sha256
            with contextlib.suppress(OSError):
                if not want or file_sha256(old) == want:  # never delete what someone changed
                    old.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created_dirs(created)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _commit_files(d: Path, staging: Path, written: list[str]) -> None:
    """Rename the staged files into ``d``, the manifest last (one atomic replace: readers see
    the old manifest or the new one); undo everything on failure."""
    retired: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for name in written:
            final = d / name
            if final.exists():
                away = d / f"{RETIRED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, away)
                retired.append((final, away))
            os.rename(staging / name, final)
            placed.append(final)
        os.replace(staging / MANIFEST_NAME, d / MANIFEST_NAME)
    except BaseException:
        for final in placed:
            with contextlib.suppress(OSError):
                final.unlink()
        for final, away in reversed(retired):
            with contextlib.suppress(OSError):
                os.rename(away, final)
        raise
    for _, away in retired:
        with contextlib.suppress(OSError):
            away.unlink()
