"""The one YAML loader for user-written files: strict keys, merge keys, errors with file/line.

Every file a user writes (``--config-file``, ``--resources``) is read with :class:`StrictLoader`,
which is PyYAML's ``SafeLoader`` plus Kubernetes' strict decoding:

* a key repeated in one mapping is an error (``sigs.k8s.io/yaml`` strict mode rejects it; PyYAML
  would silently keep the last);
* ``<<: *anchor`` merge keys work, and a key written beside the merge may override a merged one
  (only keys written in the mapping itself count as repeats).

:func:`yaml_error_message` gives one line per syntax error: ``source: line L, column C: YAML
error: problem (context)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from kvroute.errors import ConfigError

__all__ = ["StrictLoader", "iter_documents", "load_documents", "yaml_error_message"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a repeated key in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden by keys written here
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            if not isinstance(key, list | dict):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_error_message(source: str, exc: yaml.YAMLError) -> str:
    """``source: line L, column C: YAML error: problem (context)`` (1-based line and column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        return (
            f"{source}: line {mark.line + 1}, column {mark.column + 1}: "
            f"YAML error: {problem}{context}"
        )
    return f"{source}: YAML error: {exc}"


def iter_documents(text: str) -> Iterator[Any]:
    """Each document of ``text`` in order (``None`` for an empty one), constructed strictly.

    Raises :class:`yaml.YAMLError` at the first syntax error or repeated key; the documents
    before it have been yielded (a multi-document loader can report their errors too).
    """
    loader = StrictLoader(text)
    try:
        while loader.check_node():
            yield loader.construct_document(loader.get_node())
    finally:
        loader.dispose()


def load_documents(text: str, source: str) -> list[Any]:
    """The non-empty documents of ``text``; a YAML error is a :class:`ConfigError` naming
    ``source`` and the line."""
    try:
        return [doc for doc in iter_documents(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(source, exc)) from None
