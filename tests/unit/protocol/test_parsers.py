"""Parser selection and dispatch as upstream's ``requestHandler.parsers`` (protocol.parsers)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import BadRequestError, ConfigError
from kvroute.plugins.base import TypedName
from kvroute.protocol.parsers import DEFAULT_PARSERS, ParserSet, parser_set_for
from kvroute.scheduling.request import ApiKind

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
MESSAGES = json.dumps(
    {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
).encode()


@pytest.mark.parametrize(
    ("path", "parser"),
    [
        ("/v1/chat/completions", "openai-parser"),
        ("/v1/completions?x=1", "openai-parser"),
        ("/v1/responses/", "openai-parser"),
        ("/v1/chat/completions/render", "openai-parser"),
        ("/v1/images/generations", "openai-parser"),
        ("/v1/messages", "anthropic-parser"),
        ("/v1/messages/count_tokens", "anthropic-parser"),
        ("/inference/v1/generate", "vllmhttp-parser"),
        ("/v1/models", "passthrough-parser"),  # claimed by nobody: the fallback
        ("/generate", "passthrough-parser"),  # sglanghttp is not in the default list
    ],
)
def test_default_list_picks_the_longest_claimed_suffix(path: str, parser: str) -> None:
    assert ParserSet().resolve(path).name == parser


def test_default_list_is_upstreams() -> None:
    assert (
        ParserSet().names
        == DEFAULT_PARSERS
        == (
            "openai-parser",
            "anthropic-parser",
            "vllmhttp-parser",
            "passthrough-parser",
        )
    )


def test_longest_suffix_wins_over_list_order() -> None:
    parsers = ParserSet(["sglanghttp-parser", "vllmhttp-parser"])
    assert parsers.resolve("/inference/v1/generate").name == "vllmhttp-parser"
    assert parsers.resolve("/generate").name == "sglanghttp-parser"


def test_explicit_list_has_no_fallback_and_names_path_and_parsers() -> None:
    parsers = ParserSet(["openai-parser", "anthropic-parser"])
    with pytest.raises(BadRequestError) as exc:
        parsers.parse_request(b"{}", "/v1/models?verbose=1")
    assert exc.value.http_status == 400
    assert exc.value.message == (
        "no parser matches path '/v1/models' (parsers tried: openai-parser, anthropic-parser)"
    )


def test_parsers_after_the_fallback_and_repeats_are_dropped() -> None:
    parsers = ParserSet(
        ["openai-parser", "openai-parser", "passthrough-parser", "anthropic-parser"]
    )
    assert parsers.names == ("openai-parser", "passthrough-parser")
    assert parsers.resolve("/v1/messages").name == "passthrough-parser"


def test_unknown_parser_type_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="unknown parser type 'tritongrpc-parser'"):
        ParserSet(["openai-parser", "tritongrpc-parser"])


def test_passthrough_forwards_the_body_untouched_even_when_rewritten() -> None:
    raw = b'{"model": "m", "anything": [1, 2'  # not even JSON
    parsers = ParserSet(["passthrough-parser"])
    parsed = parsers.parse_request(raw, "/v1/chat/completions")
    assert parsed.api is ApiKind.PASSTHROUGH
    assert parsed.model == ""
    assert parsed.prompt_text == ""
    assert parsers.rewrite_request_body(parsed, "other") is raw


def test_dispatch_sets_the_api_and_rewrites_the_model() -> None:
    parsers = ParserSet()
    chat = parsers.parse_request(CHAT, "/v1/chat/completions")
    assert chat.api is ApiKind.CHAT_COMPLETIONS
    msg = parsers.parse_request(MESSAGES, "/v1/messages")
    assert msg.api is ApiKind.MESSAGES
    assert msg.model == "claude"
    assert msg.max_tokens == 64
    assert json.loads(parsers.rewrite_request_body(msg, "claude-v2"))["model"] == "claude-v2"
    count = parsers.parse_request(MESSAGES, "/v1/messages/count_tokens")
    assert count.api is ApiKind.MESSAGES_COUNT_TOKENS
    assert count.model == ""
    assert parsers.rewrite_request_body(count, "x") is MESSAGES


def _config(tail: str) -> object:
    return parse_epp_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n" + tail
    )


def _plugin(type_name: str, name: str) -> object:
    return SimpleNamespace(typed_name=TypedName(type_name, name))


def test_config_request_handler_parsers_act() -> None:
    config = _config(
        "plugins:\n- {name: msgs, type: anthropic-parser}\n"
        "requestHandler:\n  parsers: [{pluginRef: msgs}, {pluginRef: openai-parser}]\n"
    )
    parsers = parser_set_for(config, {"msgs": _plugin("anthropic-parser", "msgs")})
    assert parsers.names == ("anthropic-parser", "openai-parser")  # undeclared type: defaults
    with pytest.raises(BadRequestError, match="parsers tried: anthropic-parser, openai-parser"):
        parsers.resolve("/v1/models")


def test_config_deprecated_parser_key_is_used_when_request_handler_is_absent() -> None:
    declared = "plugins: [{type: passthrough-parser}]\nparser: {pluginRef: passthrough-parser}\n"
    plugins = {"passthrough-parser": _plugin("passthrough-parser", "passthrough-parser")}
    assert parser_set_for(_config(declared), plugins).names == ("passthrough-parser",)
    # parser and requestHandler.parsers together are rejected at load (test_epp_config).
    assert parser_set_for(_config(""), {}).names == DEFAULT_PARSERS


def test_config_refs_that_are_not_parsers_are_rejected_by_name() -> None:
    config = _config("requestHandler: {parsers: [{pluginRef: queue}]}\n")
    with pytest.raises(ConfigError, match="'queue' is neither a declared plugin nor a parser"):
        parser_set_for(config, {})
    with pytest.raises(ConfigError, match=r"the plugin 'queue' \(queue-scorer\) is not a parser"):
        parser_set_for(config, {"queue": _plugin("queue-scorer", "queue")})
    unknown = _config("requestHandler: {parsers: [{pluginRef: tritongrpc-parser}]}\n")
    with pytest.raises(ConfigError, match="tritongrpc-parser"):
        parser_set_for(unknown, {})
