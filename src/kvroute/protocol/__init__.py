"""Sans-IO OpenAI protocol handling: request parsing and rewriting, response usage and model name.

Nothing here touches a socket; the ext_proc server feeds bytes in and sends bytes out.
"""

from __future__ import annotations

from kvroute.protocol.openai import (
    ParsedRequest,
    api_kind_for_path,
    parse_request,
    rewrite_request_body,
)
from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body, usage_from_event

__all__ = [
    "ModelNameRewriter",
    "ParsedRequest",
    "SseUsageParser",
    "api_kind_for_path",
    "parse_request",
    "parse_usage_body",
    "rewrite_request_body",
    "usage_from_event",
]
