"""single-profile-handler: exactly one profile, run once; a failed profile is a 429."""

from __future__ import annotations

import pytest

from kvroute.errors import ConfigError, PoolExhaustedError
from kvroute.scheduling.interfaces import PROFILE_FAILURES, ProfileResult
from kvroute.scheduling.plugins.profile_handlers.single_profile import SingleProfileHandler
from tests.fakes import make_endpoint, make_request, make_state


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def test_runs_the_profile_once() -> None:
    handler = SingleProfileHandler()
    profiles = {"default": _Named("default")}
    state, request = make_state(), make_request()
    assert list(handler.pick(state, request, profiles, {})) == ["default"]
    result = ProfileResult((make_endpoint("e0"),))
    assert list(handler.pick(state, request, profiles, {"default": result})) == []


def test_primary_result_is_the_profile_result() -> None:
    result = ProfileResult((make_endpoint("e0"), make_endpoint("e1")))
    out = SingleProfileHandler().process_results(make_state(), make_request(), {"p": result})
    assert out.primary_profile == "p"
    assert out.primary is result


@pytest.mark.parametrize(
    ("result", "failure", "message"),
    [
        (None, "filter x left no endpoints", "failed to find target endpoint: filter x left"),
        (None, None, "failed to find target endpoint: picker returned no endpoint"),
        (ProfileResult(()), None, "picker returned no endpoint"),
    ],
    ids=["filter emptied the list", "no recorded reason", "picker returned nothing"],
)
def test_failed_profile_is_pool_exhausted(
    result: ProfileResult | None, failure: str | None, message: str
) -> None:
    state = make_state()
    if failure is not None:
        state.write(PROFILE_FAILURES, {"p": failure})
    with pytest.raises(PoolExhaustedError) as exc:
        SingleProfileHandler().process_results(state, make_request(), {"p": result})
    assert message in exc.value.message
    assert exc.value.http_status == 429


@pytest.mark.parametrize("names", [[], ["a", "b"]], ids=["no profile", "two profiles"])
def test_rejects_anything_but_one_profile(names: list[str]) -> None:
    with pytest.raises(ConfigError, match="exactly one scheduling profile"):
        SingleProfileHandler().check_profiles(names)
