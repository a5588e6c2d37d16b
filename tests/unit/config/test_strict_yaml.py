"""The one strict YAML loader: repeated keys rejected, merge keys handled, file/line errors."""

from __future__ import annotations

import pytest
import yaml

from kvroute.config.strict_yaml import (
    StrictLoader,
    iter_documents,
    load_documents,
    yaml_error_message,
)
from kvroute.errors import ConfigError


def test_duplicate_key_is_rejected_with_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_documents("a: 1\nb:\n  c: 1\n  c: 2\n", "x.yaml")
    assert info.value.message.startswith(
        "x.yaml: line 4, column 3: YAML error: found duplicate key 'c'"
    )


def test_merge_key_merges_and_may_be_overridden() -> None:
    text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n"
    assert load_documents(text, "m.yaml") == [{"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 3}}]


def test_two_merge_keys_are_not_duplicates_of_each_other() -> None:
    text = "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: *a\n  <<: *b\n"
    assert load_documents(text, "m.yaml")[0]["c"] == {"x": 1, "y": 2}


def test_non_string_keys_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="found duplicate key 1"):
        load_documents("1: a\n1: b\n", "k.yaml")


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        load_documents("a: [1, 2\n", "s.yaml")
    assert info.value.message.startswith("s.yaml: line 2, column 1: YAML error: expected ','")


def test_empty_documents_are_dropped_by_load_but_kept_by_iter() -> None:
    text = "---\na: 1\n---\n---\nb: 2\n"
    assert load_documents(text, "d.yaml") == [{"a": 1}, {"b": 2}]
    assert list(iter_documents(text)) == [{"a": 1}, None, {"b": 2}]


def test_iter_yields_documents_before_the_error() -> None:
    docs = iter_documents("a: 1\n---\nb: 1\nb: 2\n")
    assert next(docs) == {"a": 1}
    with pytest.raises(yaml.YAMLError):
        next(docs)


def test_safe_loader_underneath() -> None:
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_documents("!!python/object:os.system {}\n", "unsafe.yaml")
    assert issubclass(StrictLoader, yaml.SafeLoader)


def test_unmarked_error_message() -> None:
    assert yaml_error_message("f", yaml.YAMLError("boom")) == "f: YAML error: boom"
