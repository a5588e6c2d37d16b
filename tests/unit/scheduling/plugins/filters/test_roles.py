"""prefill-filter / decode-filter / encode-filter: upstream's role label and values."""

from __future__ import annotations

import logging

import pytest

from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import CycleState, Filter
from kvroute.scheduling.plugins.filters import roles
from tests.fakes import NOW, make_endpoint, make_request, names

REGISTRY = default_registry(include_entry_points=False)


def _filter(type_name: str) -> Filter:
    plugin = REGISTRY.create(type_name, type_name, {}, PluginContext())
    assert isinstance(plugin, roles.RoleFilter)
    return plugin


POOL = [
    make_endpoint("p0", labels={roles.ROLE_LABEL: "prefill"}),
    make_endpoint("d1", labels={roles.ROLE_LABEL: "decode"}),
    make_endpoint("b2", labels={roles.ROLE_LABEL: "both"}),
    make_endpoint("pd3", labels={roles.ROLE_LABEL: "prefill-decode"}),
    make_endpoint("e4", labels={roles.ROLE_LABEL: "encode"}),
    make_endpoint("ep5", labels={roles.ROLE_LABEL: "encode-prefill"}),
    make_endpoint("epd6", labels={roles.ROLE_LABEL: "encode-prefill-decode"}),
    make_endpoint("u7"),
]


@pytest.mark.parametrize(
    ("type_name", "kept"),
    [
        ("prefill-filter", ["p0", "b2", "pd3", "ep5", "epd6"]),
        ("decode-filter", ["d1", "b2", "pd3", "epd6", "u7"]),
        ("encode-filter", ["e4", "ep5", "epd6"]),
    ],
)
def test_role_filters_keep_the_stage(type_name: str, kept: list[str]) -> None:
    out = _filter(type_name).filter(CycleState(NOW), make_request(), POOL)
    assert names(out) == kept


def test_unknown_role_is_both_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    odd = [make_endpoint("x0", labels={roles.ROLE_LABEL: "prefil"}), make_endpoint("x1")]
    odd.append(make_endpoint("x2", labels={roles.ROLE_LABEL: "prefil"}))
    roles._warned.discard("prefil")
    with caplog.at_level(logging.WARNING, logger=roles.__name__):
        for _ in range(3):
            assert names(
                _filter("prefill-filter").filter(CycleState(NOW), make_request(), odd)
            ) == [
                "x0",
                "x2",
            ]
            assert names(_filter("decode-filter").filter(CycleState(NOW), make_request(), odd)) == [
                "x0",
                "x1",
                "x2",
            ]
    warnings = [r for r in caplog.records if "prefil" in r.getMessage()]
    assert len(warnings) == 1
    assert "treated as 'both'" in warnings[0].getMessage()


def test_filters_reject_parameters() -> None:
    from kvroute.errors import PluginValidationError

    with pytest.raises(PluginValidationError, match=r"parameters\.role"):
        REGISTRY.create("prefill-filter", "p", {"role": "x"}, PluginContext())
