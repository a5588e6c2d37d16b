"""Which Prometheus series carry which signal, per model-server engine, and how to read them.

The names are the model-server protocol's (``gie-epp.md`` §4.1):

====================  ==============================  ===================================
field                 vLLM                            SGLang / trtllm-serve / Triton
====================  ==============================  ===================================
waiting queue         ``vllm:num_requests_waiting``   ``sglang:num_queue_reqs`` ...
running requests      ``vllm:num_requests_running``   ``sglang:num_running_reqs`` ...
KV-cache use (0..1)   ``vllm:kv_cache_usage_perc``    ``sglang:token_usage`` ...
                      or ``vllm:gpu_cache_usage_perc``
LoRA adapters         ``vllm:lora_requests_info``     (none)
cache geometry        ``vllm:cache_config_info``      info labels or two gauges
====================  ==============================  ===================================

A spec is a PromQL instant selector, ``family{label="value",...}`` (quotes optional, as
upstream accepts ``{request_type=waiting}``); ``a or b`` tries ``a`` first and falls back to
``b``, which is how vLLM's renamed KV metric is read from old and new servers alike.

The engine of an endpoint comes from its label ``inference.networking.k8s.io/engine-type``
(default ``vllm``). Overrides follow upstream's ``core-metrics-extractor`` parameters
(``engineLabelKey``, ``defaultEngine``, ``engineConfigs``): an ``engineConfigs`` entry replaces
the built-in entry of the same name completely, a missing or empty spec disables that metric,
and a name that is not built in adds an engine.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvroute.datalayer.prometheus import MetricsParseError, Sample, SeriesSelector
from kvroute.datastore.endpoint import EMPTY_METRICS, ENGINE_TYPE_LABEL, EndpointMetrics
from kvroute.errors import ConfigError

DEFAULT_ENGINE = "vllm"

_SPEC_RE = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_MATCHER_RE = re.compile(
    r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^",]*?))\s*$'
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One instant selector: a sample name and label equality matchers."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        """``family`` or ``family{k="v",k2=v2}``; raises ``ValueError`` naming the problem."""
        match = _SPEC_RE.match(text)
        if match is None:
            raise ValueError(f"invalid metric spec {text!r}: expected family{{label=value,...}}")
        name, body = match.group(1), match.group(2)
        labels: list[tuple[str, str]] = []
        if body is not None and body.strip():
            for term in _split_matchers(body):
                m = _MATCHER_RE.match(term)
                if m is None:
                    raise ValueError(f"invalid label matcher {term.strip()!r} in spec {text!r}")
                quoted, bare = m.group(2), m.group(3)
                value = quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted else bare
                if not value:
                    raise ValueError(f"empty value for label {m.group(1)!r} in spec {text!r}")
                labels.append((m.group(1), value))
        return cls(name, tuple(sorted(labels)))

    def matches(self, sample: Sample) -> bool:
        labels = sample.labels
        return all(labels.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


def _split_matchers(body: str) -> list[str]:
    """Split ``a="x,y",b=z`` on commas outside quotes."""
    terms: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == "," and not in_quotes:
            terms.append("".join(current))
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        terms.append("".join(current))
    return terms


def parse_spec_alternatives(text: str | None) -> tuple[MetricSpec, ...]:
    """``"a or b"`` → (a, b); ``""``/None → () (metric disabled)."""
    if text is None or not text.strip():
        return ()
    return tuple(MetricSpec.parse(part) for part in re.split(r"\s+or\s+", text.strip()))


@dataclass(frozen=True, slots=True)
class EngineMapping:
    """Where one engine publishes each signal. Empty tuples / None mean "not scraped"."""

    name: str
    queued: tuple[MetricSpec, ...] = ()
    running: tuple[MetricSpec, ...] = ()
    kv_usage: tuple[MetricSpec, ...] = ()
    lora: MetricSpec | None = None
    cache_info: MetricSpec | None = None
    cache_info_block_size_label: str = "block_size"
    cache_info_num_blocks_label: str = "num_gpu_blocks"
    cache_block_size: MetricSpec | None = None  # a gauge (trtllm, Triton) instead of info labels
    cache_num_blocks: MetricSpec | None = None
    selector: SeriesSelector = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "selector", SeriesSelector(s.name for s in self.specs()))

    def specs(self) -> tuple[MetricSpec, ...]:
        single = (self.lora, self.cache_info, self.cache_block_size, self.cache_num_blocks)
        return (*self.queued, *self.running, *self.kv_usage, *(s for s in single if s))


def _spec(text: str) -> MetricSpec:
    return MetricSpec.parse(text)


BUILTIN_MAPPINGS: tuple[EngineMapping, ...] = (
    EngineMapping(
        name="vllm",
        queued=(_spec("vllm:num_requests_waiting"),),
        running=(_spec("vllm:num_requests_running"),),
        # Renamed in vLLM (GIE PR #1905, Nov 2025); older servers only have the gpu_ name.
        kv_usage=(_spec("vllm:kv_cache_usage_perc"), _spec("vllm:gpu_cache_usage_perc")),
        lora=_spec("vllm:lora_requests_info"),
        cache_info=_spec("vllm:cache_config_info"),
    ),
    EngineMapping(
        name="sglang",
        queued=(_spec("sglang:num_queue_reqs"),),
        running=(_spec("sglang:num_running_reqs"),),
        kv_usage=(_spec("sglang:token_usage"),),
        cache_info=_spec("sglang:cache_config_info"),
        cache_info_block_size_label="page_size",
        cache_info_num_blocks_label="num_pages",
    ),
    EngineMapping(
        name="trtllm-serve",
        queued=(_spec("trtllm_num_requests_waiting"),),
        running=(_spec("trtllm_num_requests_running"),),
        kv_usage=(_spec("trtllm_kv_cache_utilization"),),
        cache_block_size=_spec("trtllm_kv_cache_tokens_per_block"),
        cache_num_blocks=_spec("trtllm_kv_cache_max_blocks"),
    ),
    EngineMapping(
        name="triton-tensorrt-llm",
        queued=(_spec('nv_trt_llm_request_metrics{request_type="waiting"}'),),
        running=(_spec('nv_trt_llm_request_metrics{request_type="scheduled"}'),),
        kv_usage=(_spec('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}'),),
        cache_block_size=_spec(
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"}'
        ),
        cache_num_blocks=_spec('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"}'),
    ),
)


class EngineConfigParams(BaseModel):
    """One ``engineConfigs`` entry (upstream field names, plus kvroute's cache-geometry specs)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(min_length=1)
    queued_requests_spec: str = Field("", alias="queuedRequestsSpec")
    running_requests_spec: str = Field("", alias="runningRequestsSpec")
    kv_usage_spec: str = Field("", alias="kvUsageSpec")
    lora_spec: str = Field("", alias="loraSpec")
    cache_info_spec: str = Field("", alias="cacheInfoSpec")
    cache_info_block_size_label: str = Field("block_size", alias="cacheInfoBlockSizeLabel")
    cache_info_num_blocks_label: str = Field("num_gpu_blocks", alias="cacheInfoNumBlocksLabel")
    cache_block_size_spec: str = Field("", alias="cacheBlockSizeSpec")
    cache_num_blocks_spec: str = Field("", alias="cacheNumBlocksSpec")

    def to_mapping(self) -> EngineMapping:
        def single(text: str, what: str) -> MetricSpec | None:
            specs = parse_spec_alternatives(text)
            if len(specs) > 1:
                raise ValueError(f"{what} takes one selector, not alternatives")
            return specs[0] if specs else None

        return EngineMapping(
            name=self.name,
            queued=parse_spec_alternatives(self.queued_requests_spec),
            running=parse_spec_alternatives(self.running_requests_spec),
            kv_usage=parse_spec_alternatives(self.kv_usage_spec),
            lora=single(self.lora_spec, "loraSpec"),
            cache_info=single(self.cache_info_spec, "cacheInfoSpec"),
            cache_info_block_size_label=self.cache_info_block_size_label,
            cache_info_num_blocks_label=self.cache_info_num_blocks_label,
            cache_block_size=single(self.cache_block_size_spec, "cacheBlockSizeSpec"),
            cache_num_blocks=single(self.cache_num_blocks_spec, "cacheNumBlocksSpec"),
        )


class ExtractorParams(BaseModel):
    """The ``core-metrics-extractor`` plugin parameters, as upstream spells them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    engine_label_key: str = Field(ENGINE_TYPE_LABEL, alias="engineLabelKey", min_length=1)
    default_engine: str = Field(DEFAULT_ENGINE, alias="defaultEngine", min_length=1)
    engine_configs: tuple[EngineConfigParams, ...] = Field((), alias="engineConfigs")


class MappingRegistry:
    """Engine name → :class:`EngineMapping`, and the rule that picks one for an endpoint."""

    __slots__ = ("_by_name", "default", "engine_label_key")

    def __init__(
        self,
        overrides: Iterable[EngineMapping] = (),
        *,
        default_engine: str = DEFAULT_ENGINE,
        engine_label_key: str = ENGINE_TYPE_LABEL,
    ) -> None:
        # Copies: each registry gets its own selectors (and their parse memos), so no mutable
        # state is shared between registries through the module-level built-ins.
        by_name = {m.name: dataclasses.replace(m) for m in BUILTIN_MAPPINGS}
        seen: set[str] = set()
        for mapping in overrides:
            if mapping.name in seen:
                raise ConfigError(f"engineConfigs: engine {mapping.name!r} is defined twice")
            seen.add(mapping.name)
            by_name[mapping.name] = mapping  # replaces the built-in of that name completely
        if default_engine not in by_name:
            known = ", ".join(sorted(by_name))
            raise ConfigError(f"defaultEngine: {default_engine!r} is not one of: {known}")
        self._by_name = by_name
        self.default = by_name[default_engine]
        self.engine_label_key = engine_label_key

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> MappingRegistry:
        """Build from ``core-metrics-extractor`` parameters; errors name the field path."""
        try:
            parsed = ExtractorParams.model_validate(params or {})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        mappings = []
        for i, entry in enumerate(parsed.engine_configs):
            try:
                mappings.append(entry.to_mapping())
            except ValueError as exc:
                raise ConfigError(f"engineConfigs[{i}] ({entry.name}): {exc}") from None
        return cls(
            mappings,
            default_engine=parsed.default_engine,
            engine_label_key=parsed.engine_label_key,
        )

    def get(self, engine: str) -> EngineMapping | None:
        return self._by_name.get(engine)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_name))

    def for_labels(self, labels: Mapping[str, str]) -> EngineMapping:
        """The mapping for an endpoint's labels; unlabeled or unknown engines get the default."""
        engine = labels.get(self.engine_label_key)
        if not engine:
            return self.default
        return self._by_name.get(engine, self.default)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


# -- extraction ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtractResult:
    """A new snapshot plus what could not be read from the page (for counters and logs)."""

    metrics: EndpointMetrics
    missing: tuple[str, ...] = ()  # fields whose specs matched no series (value kept)
    problems: tuple[str, ...] = ()  # series found but unusable (value kept)


def extract(
    page_text: str,
    mapping: EngineMapping,
    now: float,
    previous: EndpointMetrics = EMPTY_METRICS,
) -> EndpointMetrics:
    """Read one ``/metrics`` page into a snapshot stamped ``updated_at=now``.

    See :func:`extract_result` for the rules on missing and malformed metrics.
    """
    return extract_result(page_text, mapping, now, previous).metrics


def extract_result(
    page_text: str,
    mapping: EngineMapping,
    now: float,
    previous: EndpointMetrics = EMPTY_METRICS,
) -> ExtractResult:
    """Read a page; a partial page still produces a snapshot, as upstream's extractor does.

    - A metric whose spec matches no series keeps its value from ``previous`` (upstream clones
      the last snapshot and overwrites what it found); it is listed in ``missing``. Pass
      ``previous=EMPTY_METRICS`` to get zeros instead.
    - A series that is found but unusable (``NaN`` count, a non-integer ``max_lora``) also keeps
      the previous value and is listed in ``problems``; a bad number never becomes a silent zero.
    - Among several matching series the one with the latest explicit timestamp wins (ties and
      no timestamps: the first on the page), as upstream's ``getLatestMetric``. For
      ``lora_requests_info`` the value *is* the timestamp, so the largest value wins.
    - If no enabled metric could be read at all, the page is not this engine's (wrong
      port, an HTML error page, the wrong engine-type label): :class:`MetricsParseError`, and
      the caller keeps the old snapshot so it ages into staleness. A mapping with every metric
      disabled reads nothing and just refreshes ``updated_at``.
    - A malformed line of a wanted series raises :class:`MetricsParseError` (whole page).
    """
    families = mapping.selector.parse(page_text)
    updates: dict[str, Any] = {}
    missing: list[str] = []
    problems: list[str] = []

    def count(field_name: str, specs: Sequence[MetricSpec]) -> None:
        if not specs:
            return
        sample = _first_match(families, specs)
        if sample is None:
            missing.append(field_name)
        elif not math.isfinite(sample.value) or sample.value < 0:
            problems.append(f"{field_name}: unusable value {sample.value!r} in {sample.name}")
        else:
            updates[field_name] = int(sample.value)

    count("waiting_queue_size", mapping.queued)
    count("running_queue_size", mapping.running)
    if mapping.kv_usage:
        sample = _first_match(families, mapping.kv_usage)
        if sample is None:
            missing.append("kv_cache_usage")
        elif not math.isfinite(sample.value) or sample.value < 0:
            problems.append(f"kv_cache_usage: unusable value {sample.value!r} in {sample.name}")
        else:
            updates["kv_cache_usage"] = sample.value
    if mapping.lora is not None:
        _read_lora(families, mapping.lora, updates, missing, problems)
    if mapping.cache_info is not None:
        _read_cache_info(families, mapping, updates, missing, problems)
    count("cache_block_size", (mapping.cache_block_size,) if mapping.cache_block_size else ())
    count("cache_num_blocks", (mapping.cache_num_blocks,) if mapping.cache_num_blocks else ())

    if mapping.specs() and not updates:
        if problems:
            raise MetricsParseError(f"no usable {mapping.name} metric: {'; '.join(problems)}")
        wanted = ", ".join(str(s) for s in mapping.specs())
        raise MetricsParseError(f"none of the {mapping.name} metrics found on the page ({wanted})")
    metrics = dataclasses.replace(previous, updated_at=now, **updates)
    return ExtractResult(metrics, tuple(missing), tuple(problems))


def _candidates(families: Mapping[str, list[Sample]], spec: MetricSpec) -> list[Sample]:
    return [s for s in families.get(spec.name, ()) if spec.matches(s)]


def _first_match(
    families: Mapping[str, list[Sample]], specs: Sequence[MetricSpec]
) -> Sample | None:
    """The latest matching series of the first spec that matches anything."""
    for spec in specs:
        candidates = _candidates(families, spec)
        if candidates:
            best = candidates[0]
            for s in candidates[1:]:
                if (s.timestamp_ms or -1) > (best.timestamp_ms or -1):
                    best = s
            return best
    return None


def _csv(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _read_lora(
    families: Mapping[str, list[Sample]],
    spec: MetricSpec,
    updates: dict[str, Any],
    missing: list[str],
    problems: list[str],
) -> None:
    candidates = [s for s in _candidates(families, spec) if not math.isnan(s.value)]
    if not candidates:
        missing.append("lora")
        return
    latest = max(candidates, key=lambda s: s.value)  # the value is the write timestamp
    labels = latest.labels
    updates["active_models"] = _csv(labels.get("running_lora_adapters", ""))
    updates["waiting_models"] = _csv(labels.get("waiting_lora_adapters", ""))
    max_lora = labels.get("max_lora", "")
    if max_lora:
        try:
            updates["max_active_models"] = int(max_lora)
        except ValueError:
            problems.append(f"max_active_models: max_lora={max_lora!r} is not an integer")


def _read_cache_info(
    families: Mapping[str, list[Sample]],
    mapping: EngineMapping,
    updates: dict[str, Any],
    missing: list[str],
    problems: list[str],
) -> None:
    assert mapping.cache_info is not None  # checked by the caller
    sample = _first_match(families, (mapping.cache_info,))
    if sample is None:
        missing.append("cache_info")
        return
    for field_name, label in (
        ("cache_block_size", mapping.cache_info_block_size_label),
        ("cache_num_blocks", mapping.cache_info_num_blocks_label),
    ):
        raw = sample.labels.get(label, "")
        if not raw:
            missing.append(f"{field_name} (label {label})")
            continue
        try:
            updates[field_name] = int(raw)
        except ValueError:
            problems.append(f"{field_name}: label {label}={raw!r} is not an integer")
