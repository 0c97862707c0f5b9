"""Uploaded MLflow model packages: unpacked safely, checked, and described (flavours, signature)."""

import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from django.core.exceptions import ValidationError

SERVABLE_FLAVOR = "python_function"
MAX_FILES = 10_000


@dataclass(frozen=True)
class ModelPackage:
    directory: Path
    flavors: list[str]
    signature: dict | None


def _refuse(message: str) -> ValidationError:
    return ValidationError(message, code="invalid_model_package")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise _refuse(f"The archive holds an unsafe path: {name!r}.")
    return path


def package_unpack(archive: Path, destination: Path, *, max_unpacked_bytes: int) -> ModelPackage:
    """Unpack a zip or tar(.gz) of an MLflow model directory into `destination` and describe it.

    Refuses absolute or `..` paths, links, more than MAX_FILES files or more than `max_unpacked_bytes`
    unpacked (zip bombs), archives that are neither zip nor tar, and packages without a servable flavour.
    """
    total = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_FILES:
                raise _refuse("The archive holds too many files.")
            for member in members:
                _safe_member(member.filename)
                total += member.file_size
                if total > max_unpacked_bytes:
                    raise _refuse("The model is too large once unpacked.")
            bundle.extractall(destination)  # noqa: S202 (every member's path was checked above)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            if len(members) > MAX_FILES:
                raise _refuse("The archive holds too many files.")
            for member in members:
                _safe_member(member.name)
                if member.issym() or member.islnk() or member.isdev():
                    raise _refuse(f"The archive holds a link or device: {member.name!r}.")
                total += member.size
                if total > max_unpacked_bytes:
                    raise _refuse("The model is too large once unpacked.")
            bundle.extractall(destination, filter="data")
    else:
        raise _refuse("Upload a .zip or .tar.gz of an MLflow model directory.")
    return package_describe(_model_directory(destination))


def _model_directory(root: Path) -> Path:
    if (root / "MLmodel").is_file():
        return root
    candidates = [path.parent for path in root.glob("*/MLmodel")]
    if len(candidates) != 1:
        raise _refuse("The archive has no MLmodel file at its top or in one top-level folder.")
    return candidates[0]


def package_describe(directory: Path) -> ModelPackage:
    try:
        mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise _refuse("The MLmodel file cannot be read.") from None
    if not isinstance(mlmodel, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise _refuse("The MLmodel file lists no flavours.")
    flavors = sorted(mlmodel["flavors"])
    if SERVABLE_FLAVOR not in flavors:
        raise _refuse(
            f"The model has no {SERVABLE_FLAVOR} flavour, so no model server can load it "
            f"(it has: {', '.join(flavors)})."
        )
    return ModelPackage(directory=directory, flavors=flavors, signature=_signature(mlmodel.get("signature")))


def _signature(raw) -> dict | None:
    """MLflow stores each part of a signature as a JSON string; keep them as JSON."""
    if not isinstance(raw, dict):
        return None
    parsed = {}
    for part in ("inputs", "outputs", "params"):
        value = raw.get(part)
        if isinstance(value, str):
            try:
                parsed[part] = json.loads(value)
            except json.JSONDecodeError:
                raise _refuse(f"The signature's {part} are not valid JSON.") from None
        elif value is not None:
            parsed[part] = value
    return parsed or None
