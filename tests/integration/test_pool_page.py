"""The live pool page in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by selenium), against a running EPP behind real Envoy with three ``kvroute_sim`` servers.

The browser must list every endpoint, see the in-flight/running values rise under load and fall
back, show the decisions' per-plugin explanation, and render a model name and a header full of
markup as text (no script runs, no element is created). The routes are GET-only.
Set ``KVROUTE_POOL_SCREENSHOT=path.png`` to save a screenshot under load (docs/img/pool-page.png).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration]

HOSTILE_MODEL = '<script>window.__kvpwn=1</script><img src=x onerror="window.__kvpwn=2">'
HOSTILE_TENANT = "<b id=kvbold>tenant</b>"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _browser_tools() -> tuple[str, str] | str:
    """(chromium, chromedriver), installing the Debian packages when missing; else the reason."""

    def find() -> tuple[str, str] | None:
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        return (browser, driver) if browser and driver else None

    found = find()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "chromium/chromedriver missing and apt-get (as root) unavailable"
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            return f"installing chromium failed: {' '.join(cmd)}: {exc}"
    return find() or "chromium installed but not on PATH"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    tools = _browser_tools()
    if isinstance(tools, str):
        print(f"SKIP reason: {tools}")
        pytest.skip(tools)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser, chromedriver = tools
    profile = tempfile.mkdtemp(prefix="kvroute-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1400,1000")
    d = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _until(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _cells(d: Any, cls: str) -> dict[str, int]:
    """Endpoint -> the integer in its ``td.<cls>`` cell, read in one script call (the page
    re-renders twice a second, so element handles would go stale between calls)."""
    rows = d.execute_script(
        "return [...document.querySelectorAll('#endpoints tbody tr')]"
        ".map(r => [r.dataset.endpoint, r.querySelector('td.' + arguments[0]).textContent]);",
        cls,
    )
    return {name: int(text) for name, text in rows}


def _texts(d: Any, selector: str) -> list[str]:
    return list(
        d.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
            selector,
        )
    )


@pytest.mark.asyncio(loop_scope="function")
async def test_page_lists_endpoints_follows_load_and_escapes(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    async with (
        SimCluster(3, profile="tiny", model="base") as sims,
        Gateway(sims.urls, log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=60.0) as client,
    ):
        base = f"http://127.0.0.1:{gw.epp.ports.metrics}"
        names = {e.name for e in gw.epp.datastore.endpoints()}
        await asyncio.to_thread(driver.get, f"{base}/pool")

        def listed() -> bool:
            return set(_cells(driver, "inflight")) == names

        await _until(listed, what="every endpoint listed")
        assert sum(_cells(driver, "inflight").values()) == 0

        # Load: long generations keep requests in flight on the servers.
        # Waves of 6 until the page has shown them: one wave lasts ~0.35 s on the tiny
        # profile, shorter than the page's refresh can be relied on to catch on a busy box.
        body = {"model": "base", "prompt": "load " * 20, "max_tokens": 300}
        stop = asyncio.Event()
        statuses: list[int] = []

        async def waves() -> None:
            while not stop.is_set():
                batch = [client.post("/v1/completions", json=body) for _ in range(6)]
                statuses.extend(r.status_code for r in await asyncio.gather(*batch))

        load = asyncio.create_task(waves())
        busy = await _until(
            lambda: sum(_cells(driver, "inflight").values()) > 0, what="in-flight count rising"
        )
        assert busy
        shot = os.environ.get("KVROUTE_POOL_SCREENSHOT")
        if shot:
            await asyncio.to_thread(driver.save_screenshot, shot)
        stop.set()
        await load
        assert statuses
        assert all(code == 200 for code in statuses)
        # The default config's prefix scorer now holds the prompt's blocks on the picked server.
        await _until(
            lambda: sum(_cells(driver, "prefix-blocks").values()) > 0, what="prefix blocks held"
        )
        await _until(
            lambda: sum(_cells(driver, "inflight").values()) == 0, what="in-flight back to 0"
        )

        # Decisions (recorded while the page is open) with a plugin-by-plugin explanation.
        assert gw.epp.metrics.recent.watchers >= 1
        await _until(
            lambda: any("scorer" in t for t in _texts(driver, "#decisions li .steps")),
            what="decision explanations",
        )

        # Markup in a model name and a header is shown as text.
        await client.post(
            "/v1/completions",
            json={"model": HOSTILE_MODEL, "prompt": "x", "max_tokens": 1},
            headers={"x-gateway-inference-fairness-id": HOSTILE_TENANT},
        )

        def hostile_shown() -> bool:
            heads = _texts(driver, "#decisions .head")
            return any(HOSTILE_MODEL in h and HOSTILE_TENANT in h for h in heads)

        await _until(hostile_shown, what="the hostile decision rendered as text")
        assert driver.execute_script("return window.__kvpwn === undefined")
        assert driver.find_elements(By.CSS_SELECTOR, "#decisions img, #decisions script") == []
        assert driver.find_elements(By.ID, "kvbold") == []

        # Read-only: no route accepts anything but GET.
        for path in ("/pool", "/pool/state", "/pool/events"):
            r = await client.post(f"{base}{path}", content=b"{}")
            assert r.status_code == 405, path
        state = (await client.get(f"{base}/pool/state")).json()
        assert {e["name"] for e in state["endpoints"]} == names


def test_kvroute_top_once_against_a_live_epp(tmp_path: Path) -> None:
    """``kvroute top --once`` as a real subprocess against a running EPP lists every endpoint."""
    import sys

    async def scenario() -> tuple[set[str], str]:
        async with (
            SimCluster(2, profile="tiny", model="base") as sims,
            Gateway(sims.urls, log_dir=tmp_path) as gw,
        ):
            names = {e.name for e in gw.epp.datastore.endpoints()}
            url = f"http://127.0.0.1:{gw.epp.ports.metrics}"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kvroute.cli", "top", "--url", url, "--once",
                stdout=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            return names, out.decode()

    names, out = asyncio.run(scenario())
    for name in names:
        assert name in out, out
