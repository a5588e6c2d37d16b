"""Load InferencePool / InferenceModel / InferenceObjective / InferenceModelRewrite YAML.

Files are multi-document YAML as a user would ``kubectl apply``. Loading is all-or-nothing:
every error in every file is collected and raised together as one :class:`ResourceLoadError`
(one error per line, in file and document order), and nothing is returned unless all
documents are valid. Each error names the file, the 1-based document index, the object
(kind and name), the field path and a reason (one line; wrapped here)::

    pool.yaml: document 2 (InferenceModel food-review): spec.targetModels[1].weight: \
must be 1..1000000

Beyond the per-field rules of :mod:`kvroute.api`, a set is rejected when

* a YAML mapping repeats a key (Kubernetes' strict decoder rejects it; PyYAML keeps the last),
* two objects share kind, namespace and name,
* two InferenceModels of one pool share ``modelName`` (upstream resolves this in the cluster by
  "oldest wins" and a status condition; in a file it is a mistake),
* a ``poolRef`` names a pool that is not in the set, when the set contains any pool.

A YAML syntax error stops that file (later documents cannot be located reliably) and names
the line and column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from kvroute.api import (
    RESOURCE_KINDS,
    InferenceModel,
    InferenceModelRewrite,
    InferenceObjective,
    InferencePool,
    InferencePoolV1,
    InferencePoolV1Alpha2,
    PoolView,
    Resource,
)
from kvroute.config.strict_yaml import iter_documents, yaml_error_message
from kvroute.config.yaml_errors import format_validation_error
from kvroute.errors import ConfigError

__all__ = [
    "ResourceLoadError",
    "ResourceSet",
    "load_resources",
    "load_resources_text",
]

_YAML_SUFFIXES = (".yaml", ".yml")


class ResourceLoadError(ConfigError):
    """Every problem found while loading; ``message`` has one per line."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors: tuple[str, ...] = tuple(errors)


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """The validated objects, each kind in load order (file order, then document order)."""

    pools: tuple[InferencePool, ...] = ()
    models: tuple[InferenceModel, ...] = ()
    objectives: tuple[InferenceObjective, ...] = ()
    rewrites: tuple[InferenceModelRewrite, ...] = ()

    @classmethod
    def from_objects(cls, objects: Iterable[Resource]) -> ResourceSet:
        """Group already-validated objects (e.g. from a Kubernetes watch) by kind.

        No cross-object checks here: in a cluster, conflicts are resolved by age (see
        :mod:`kvroute.requestcontrol.model_resolution`), not rejected.
        """
        pools: list[InferencePool] = []
        models: list[InferenceModel] = []
        objectives: list[InferenceObjective] = []
        rewrites: list[InferenceModelRewrite] = []
        for obj in objects:
            if isinstance(obj, InferencePoolV1 | InferencePoolV1Alpha2):
                pools.append(obj)
            elif isinstance(obj, InferenceModel):
                models.append(obj)
            elif isinstance(obj, InferenceObjective):
                objectives.append(obj)
            else:
                rewrites.append(obj)
        return cls(tuple(pools), tuple(models), tuple(objectives), tuple(rewrites))

    def __len__(self) -> int:
        return len(self.pools) + len(self.models) + len(self.objectives) + len(self.rewrites)

    def pool_views(self) -> tuple[PoolView, ...]:
        return tuple(p.view() for p in self.pools)

    def pool(self, name: str | None = None, namespace: str = "default") -> PoolView:
        """The pool named ``name``; with no name, the only pool in the set.

        Raises :class:`ConfigError` when there is no such pool or the choice is ambiguous.
        """
        views = self.pool_views()
        if name is None:
            if len(views) != 1:
                names = ", ".join(v.name or "(unnamed)" for v in views) or "none"
                raise ConfigError(
                    f"expected exactly one InferencePool, found {len(views)} ({names}); "
                    "name the pool to use"
                )
            return views[0]
        for view in views:
            if view.name == name and view.namespace == namespace:
                return view
        raise ConfigError(f"no InferencePool {namespace}/{name} in the loaded resources")

    def for_pool(self, name: str, namespace: str = "default") -> ResourceSet:
        """Only the pool ``namespace/name`` and the objects whose ``poolRef`` points at it."""

        def mine(obj: InferenceModel | InferenceObjective | InferenceModelRewrite) -> bool:
            return obj.spec.pool_ref.name == name and obj.metadata.namespace == namespace

        return ResourceSet(
            pools=tuple(
                p
                for p in self.pools
                if p.metadata.name == name and p.metadata.namespace == namespace
            ),
            models=tuple(m for m in self.models if mine(m)),
            objectives=tuple(o for o in self.objectives if mine(o)),
            rewrites=tuple(r for r in self.rewrites if mine(r)),
        )


def load_resources(paths: Sequence[Path | str]) -> ResourceSet:
    """Load and validate every file (a directory means its ``*.yaml``/``*.yml``, sorted)."""
    loaded: list[_Loaded] = []
    errors: list[str] = []
    for path in _expand([Path(p) for p in paths], errors):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read file: {exc}")
            continue
        _parse_text(text, str(path), loaded, errors)
    return _finish(loaded, errors)


def load_resources_text(text: str, source_name: str = "<text>") -> ResourceSet:
    """Load one multi-document YAML string; ``source_name`` is used in error messages."""
    loaded: list[_Loaded] = []
    errors: list[str] = []
    _parse_text(text, source_name, loaded, errors)
    return _finish(loaded, errors)


# --- internals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    obj: Resource
    source: str
    index: int

    @property
    def where(self) -> str:
        return f"{self.source}: document {self.index} ({_label(self.obj)})"


def _label(obj: Resource) -> str:
    name = obj.metadata.name
    return f"{obj.kind} {name}" if name else obj.kind


def _expand(paths: Sequence[Path], errors: list[str]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES)
            if not found:
                errors.append(f"{path}: directory has no .yaml/.yml files")
            files.extend(found)
        else:
            files.append(path)
    return files


def _parse_text(text: str, source: str, loaded: list[_Loaded], errors: list[str]) -> None:
    try:
        for index, doc in enumerate(iter_documents(text), start=1):
            _validate_document(doc, source, index, loaded, errors)
    except yaml.YAMLError as exc:
        errors.append(yaml_error_message(source, exc))


def _validate_document(
    doc: Any, source: str, index: int, loaded: list[_Loaded], errors: list[str]
) -> None:
    if doc is None:
        return  # an empty document, e.g. a trailing `---`
    where = f"{source}: document {index}"
    if not isinstance(doc, dict):
        errors.append(f"{where}: expected a Kubernetes object (a mapping), got {_kind_of(doc)}")
        return
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(kind, str) and kind:
        where += f" ({kind} {name})" if isinstance(name, str) and name else f" ({kind})"
    if not isinstance(api_version, str) or not isinstance(kind, str):
        errors.append(f"{where}: apiVersion and kind are required strings")
        return
    model = RESOURCE_KINDS.get((api_version, kind))
    if model is None:
        errors.append(f"{where}: {_unknown_type(api_version, kind)}")
        return
    try:
        # RESOURCE_KINDS only holds the Resource classes.
        obj = cast(Resource, model.model_validate(doc, by_alias=True, by_name=False))
    except ValidationError as exc:
        errors.extend(f"{where}: {line}" for line in format_validation_error(exc))
        return
    loaded.append(_Loaded(obj, source, index))


def _unknown_type(api_version: str, kind: str) -> str:
    versions = sorted(v for v, k in RESOURCE_KINDS if k == kind)
    if versions:
        return f"unknown apiVersion {api_version!r} for kind {kind}; expected " + " or ".join(
            repr(v) for v in versions
        )
    kinds = ", ".join(sorted({k for _, k in RESOURCE_KINDS}))
    return f"unknown kind {kind!r} (apiVersion {api_version!r}); supported kinds: {kinds}"


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _finish(loaded: list[_Loaded], errors: list[str]) -> ResourceSet:
    errors.extend(_cross_object_errors(loaded))
    if errors:
        raise ResourceLoadError(errors)
    return ResourceSet.from_objects(item.obj for item in loaded)


def _cross_object_errors(loaded: list[_Loaded]) -> list[str]:
    errors: list[str] = []
    by_key: dict[tuple[str, str, str], _Loaded] = {}
    model_names: dict[tuple[str, str, str], _Loaded] = {}
    pools = {
        (item.obj.metadata.namespace, item.obj.metadata.name)
        for item in loaded
        if isinstance(item.obj, InferencePoolV1 | InferencePoolV1Alpha2)
    }
    for item in loaded:
        obj = item.obj
        key = (obj.kind, obj.metadata.namespace, obj.metadata.name)
        first = by_key.setdefault(key, item)
        if first is not item:
            errors.append(
                f"{item.where}: metadata.name: duplicate {obj.kind} "
                f"{obj.metadata.namespace}/{obj.metadata.name or '(unnamed)'} "
                f"(first defined in {first.source} document {first.index})"
            )
        if isinstance(obj, InferencePoolV1 | InferencePoolV1Alpha2):
            continue
        pool_name = obj.spec.pool_ref.name
        if pools and (obj.metadata.namespace, pool_name) not in pools:
            errors.append(
                f"{item.where}: spec.poolRef.name: no InferencePool "
                f"{obj.metadata.namespace}/{pool_name} in the loaded resources"
            )
        if isinstance(obj, InferenceModel):
            mkey = (obj.metadata.namespace, pool_name, obj.spec.model_name)
            owner = model_names.setdefault(mkey, item)
            if owner is not item:
                errors.append(
                    f"{item.where}: spec.modelName: {obj.spec.model_name!r} is already used by "
                    f"{_label(owner.obj)} ({owner.source} document {owner.index}) "
                    f"in pool {pool_name}"
                )
    return errors
