"""The web dashboard as people use it, in headless Chromium (Debian's `chromium`, driven by
Playwright) against a real `clobi server` and agents, all as processes on 127.0.0.1: a user
logs in with a token, watches a job submitted from the CLI appear and change state without
reloading (timed against the store's events), reads its live log, kills it from the page and
downloads another job's output; markup in names and logs stays text; forged requests change
nothing; an admin watches a pool grow and drains it; `clobi ui` logs a browser in once.

Screenshots of every step go to `test-artifacts/dashboard/<test>/` (printed by each test), with
the measured update latencies in `latency.json`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from clobi.session import Session
from tests.acceptance.harness import fast_session, terminate_pool_machines
from tests.conftest import need

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
LIVE_WITHIN_S = 1.0
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_LOG = "<b>bold</b> <script>alert(2)</script> <img src=y onerror=alert(3)>"
# Notes when each job row first shows each state (`data-state`), on the page's own clock (the
# same machine's clock as the store's event timestamps).
RECORD_ROWS = """() => {
  window.__seen = {};
  const note = () => {
    for (const tr of document.querySelectorAll("tr[data-job-id]")) {
      const key = `${tr.dataset.jobId}:${tr.dataset.state}`;
      if (!(key in window.__seen)) window.__seen[key] = Date.now() / 1000;
    }
    const badge = document.querySelector("#job-state [data-state]");
    if (badge && !(`job:${badge.dataset.state}` in window.__seen)) {
      window.__seen[`job:${badge.dataset.state}`] = Date.now() / 1000;
    }
  };
  note();
  new MutationObserver(note).observe(document.body,
    { subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"] });
}"""


def user_env(home: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    if token is not None:
        env["CLOBI_TOKEN"] = token
    return env


def clobi(*args: str | Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "clobi", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


def wait_for_line(log: Path, proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in:\n{log.read_text()}")


@dataclass
class Server:
    url: str
    session: Session
    home: Path
    admin: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, token: str | None = None) -> dict[str, str]:
        return user_env(self.home, token)

    def token(self, role: str, name: str = "", pool: str = "") -> str:
        args = ["token", "create", "--role", role, "--session", self.url]
        args += ["--name", name] if name else []
        args += ["--pool", pool] if pool else []
        return clobi(*args, env=self.env(self.admin))

    def submit(self, token: str, *args: str) -> int:
        return int(clobi("submit", "--session", self.url, *args, env=self.env(token)))

    def events(self, job_id: int) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.url}/api/v1/events",
            params={"job_id": job_id},
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert answer.status_code == 200, answer.text
        events: list[dict[str, Any]] = answer.json()
        return events

    def all_events(self) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.admin}"}
        answer = httpx.get(f"{self.url}/api/v1/events", headers=headers)
        events: list[dict[str, Any]] = answer.json()
        return events

    def event_ts(self, job_id: int, to_state: str) -> float:
        return float(next(e["ts"] for e in self.events(job_id) if e["to_state"] == to_state))

    def job(self, job_id: int) -> dict[str, Any]:
        answer = httpx.get(
            f"{self.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {self.admin}"}
        )
        job: dict[str, Any] = answer.json()["job"]
        return job

    def join_agent(self, tmp: Path, cpus: int = 2) -> subprocess.Popen[bytes]:
        bootstrap = self.token("bootstrap", pool="remote")
        with (tmp / f"agent-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clobi", "agent", "--join", self.url, "--cpus", str(cpus)],
                env=self.env(bootstrap),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc


def start_server(tmp_path: Path, pools: str = "") -> tuple[Server, subprocess.Popen[bytes], Path]:
    session = fast_session(tmp_path / "session")
    if pools:
        config = session.root / "clobi.toml"
        config.write_text(config.read_text() + pools)
    home, log_path = tmp_path / "home", tmp_path / "server.log"
    admin = clobi(
        "token", "create", "--role", "admin", "--session", session.root, env=user_env(home)
    )
    env = {**user_env(home), "CLOBI_BIND": "127.0.0.1:0"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clobi", "server", "--session", str(session.root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = wait_for_line(log_path, proc, r"listening on (http://\S+)").group(1)
    return Server(url, session, home, admin), proc, log_path


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    started: list[tuple[Server, subprocess.Popen[bytes], Path]] = []

    def make(pools: str = "") -> Server:
        started.append(start_server(tmp_path, pools))
        return started[-1][0]

    yield make
    for server, proc, log in started:
        for agent in server.procs:
            stop(agent)
        # uvicorn ends by re-raising the signal it was stopped with, after a clean shutdown;
        # a browser still following the live events must not hold the shutdown up
        began = time.monotonic()
        assert stop(proc) in (0, -signal.SIGTERM), log.read_text()
        assert time.monotonic() - began < 10, log.read_text()
        terminate_pool_machines(server.session)  # the manager's machines outlive the server
        assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture
def server(server_factory: Callable[[str], Server]) -> Server:
    return server_factory("")


class Browser:
    """Headless Chromium with a fresh profile; records dialogs and console errors, and saves
    numbered screenshots into the test's artifacts folder."""

    def __init__(self, context: Any, artifacts: Path) -> None:
        self.context, self.artifacts = context, artifacts
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.page = context.pages[0] if context.pages else context.new_page()
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.shots = 0
        self.latency: dict[str, float] = {}

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def shot(self, name: str) -> None:
        self.shots += 1
        self.page.screenshot(path=self.artifacts / f"{self.shots:02d}-{name}.png", full_page=True)

    def login(self, url: str, token: str, target: str = "/ui/") -> Any:
        self.page.goto(f"{url}{target}")
        assert "/ui/login" in self.page.url
        self.page.fill("#token", token)
        self.shot("login")
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        assert self.page.url == f"{url}{target}", self.page.url

    def seen(self, key: str, timeout_s: float = 15.0) -> float:
        """When the page first showed `key` (`<job id>:<state>`, or `job:<state>`)."""
        self.page.wait_for_function(
            f"() => window.__seen && {json.dumps(key)} in window.__seen",
            timeout=timeout_s * 1000,
        )
        return float(self.page.evaluate(f"() => window.__seen[{json.dumps(key)}]"))

    def measure(self, what: str, shown: float, changed: float) -> None:
        latency = shown - changed
        self.latency[what] = round(latency, 3)
        print(f"dashboard: {what}: shown {latency * 1000:.0f} ms after the store's event")
        assert latency < LIVE_WITHIN_S, f"{what}: {latency:.3f} s"

    def text(self, selector: str) -> str:
        return str(self.page.text_content(selector) or "")

    def check_clean(self) -> None:
        assert self.dialogs == [], self.dialogs  # no script of the data ever ran
        violations = [c for c in self.console if "Content Security Policy" in c]
        errors = [c for c in self.console if c.startswith(("error", "pageerror"))]
        assert violations == [], violations  # nothing on our pages needs an exception
        assert not [e for e in errors if "401" not in e and "403" not in e], errors


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Browser]:
    need(Path(CHROMIUM).exists(), "the dashboard tests need Chromium (apt-get install chromium)")
    need(
        importlib.util.find_spec("playwright") is not None,
        "the dashboard tests need Playwright (pip install playwright; no browser download)",
    )
    from playwright.sync_api import sync_playwright

    artifacts = ARTIFACTS / request.node.name
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    print(f"dashboard: screenshots in {artifacts}")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
        )
        browser = Browser(context, artifacts)
        try:
            yield browser
        finally:
            (artifacts / "latency.json").write_text(json.dumps(browser.latency, indent=2))
            context.close()


def test_a_user_watches_a_job_live_kills_it_and_downloads_an_output(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    alice = server.token("user", "alice")
    browser.login(server.url, alice, "/ui/jobs")
    cookies = {c["name"]: c for c in browser.context.cookies()}
    session = cookies["clobi_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert alice.split("_", 2)[2] not in session["value"]
    page = browser.page
    response = page.reload()
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector("#live.on")
    page.evaluate(RECORD_ROWS)

    command = f"echo '{XSS_LOG}'; echo second line; sleep 120"
    job = server.submit(alice, "--name", XSS_NAME, "--", "sh", "-c", command)
    browser.measure(
        "a submitted job appears", browser.seen(f"{job}:queued"), server.event_ts(job, "queued")
    )
    row = page.locator(f'tr[data-job-id="{job}"]')
    assert row.locator(".name").text_content() == XSS_NAME
    browser.shot("queued")

    server.join_agent(tmp_path)
    running = browser.seen(f"{job}:running", timeout_s=60)
    browser.measure("the job starts", running, server.event_ts(job, "running"))
    assert page.locator("img").count() == 0  # the name stayed text
    browser.shot("running")

    page.click(f'tr[data-job-id="{job}"] a[href="/ui/jobs/{job}"]')
    page.wait_for_function(
        "(text) => document.getElementById('log').textContent.includes(text)",
        arg="second line",
        timeout=30_000,
    )
    assert XSS_LOG in browser.text("#log")
    assert page.locator("#log *").count() == 0  # the log's markup stayed text
    assert browser.text("#job-name") == XSS_NAME
    assert page.locator("img").count() == 0
    page.evaluate(RECORD_ROWS)
    browser.shot("live-log")

    page.click("#kill")
    killed = browser.seen("job:cancelled", timeout_s=30)
    browser.measure("the job is killed from the page", killed, server.event_ts(job, "cancelled"))
    assert server.job(job)["state"] == "cancelled"
    assert server.job(job)["reason"] == "killed by user"
    page.wait_for_selector("#retry:not([disabled])")
    browser.shot("killed")

    outputs = "echo 42 > result.txt; echo done"
    done = server.submit(
        alice, "--name", "with output", "--outputs", "result.txt", "--", "sh", "-c", outputs
    )
    page.goto(f"{server.url}/ui/jobs/{done}")
    page.wait_for_selector("#download:not([hidden])", timeout=60_000)
    with page.expect_download() as info:
        page.click("#download")
    saved = tmp_path / "download.tar"
    info.value.save_as(saved)
    assert info.value.suggested_filename == f"job-{done}-output.tar"
    with tarfile.open(saved) as tar:
        member = tar.extractfile("result.txt")
        assert member is not None and member.read() == b"42\n"
    page.wait_for_function("() => document.getElementById('log').textContent.includes('done')")
    browser.shot("output")

    page.goto(f"{server.url}/ui/")
    page.wait_for_selector('#counts [data-state="succeeded"] .n')
    assert page.locator('#counts a[data-state="cancelled"] .n').text_content() == "1"
    browser.shot("overview")
    browser.check_clean()


def test_requests_without_the_csrf_token_change_nothing_and_logout_ends_the_session(
    server: Server, browser: Browser
) -> None:
    alice = server.token("user", "alice")
    job = server.submit(alice, "--", "true")  # no agent: it stays queued
    browser.login(server.url, alice, f"/ui/jobs/{job}")
    page = browser.page
    page.wait_for_selector("#kill:not([disabled])")
    forged = """async ([id, token]) => {
        const headers = { "Content-Type": "application/json" };
        if (token !== null) headers["X-CSRF-Token"] = token;
        const answer = await fetch("/ui/api/jobs/kill",
            { method: "POST", headers, body: JSON.stringify({ ids: [id] }) });
        return answer.status;
    }"""
    assert page.evaluate(forged, [job, None]) == 403
    assert page.evaluate(forged, [job, "0" * 64]) == 403
    assert server.job(job)["state"] == "queued"
    assert server.job(job)["cancel_requested"] is False

    page.locator("form.logout button").click()
    page.wait_for_url(f"{server.url}/ui/login")
    page.goto(f"{server.url}/ui/jobs/{job}")
    assert "/ui/login" in page.url
    browser.shot("logged-out")
    browser.check_clean()


SIM_POOL = """
[manager]
tick = "1s"

[pools.sim]
provider = "simulated"
cpus = 1
memory = "1GiB"
min = 1
max = 2
cost_per_hour = 0.25
boot_delay = "1s"
boot_timeout = "60s"
"""


def test_an_admin_watches_a_pool_grow_and_drains_and_kills_it_from_the_page(
    server_factory: Callable[[str], Server], browser: Browser
) -> None:
    server = server_factory(SIM_POOL)
    browser.login(server.url, server.admin, "/ui/pools")
    page = browser.page
    pool = page.locator('section.pool[data-pool="sim"]')
    pool.wait_for()
    page.wait_for_selector('#decisions td:text-matches("^pool sim: launch")', timeout=30_000)
    instance = pool.locator("tr[data-instance-id]").first
    page.wait_for_function(
        """() => [...document.querySelectorAll('section.pool tr[data-instance-id] td')]
              .some((td) => td.textContent === 'running')""",
        timeout=60_000,
    )
    browser.shot("pool-running")

    page.goto(f"{server.url}/ui/agents")
    page.wait_for_selector("#agents tbody tr[data-agent-id]", timeout=30_000)
    browser.shot("agents")

    page.goto(f"{server.url}/ui/pools")
    row = page.locator('section.pool[data-pool="sim"] tr[data-instance-id]').first
    instance = int(row.get_attribute("data-instance-id") or 0)
    row.locator('button[data-action="drain"]').click()
    page.wait_for_selector(f"#flash:text-is('pool sim: drain instance {instance}')")
    # The page follows it out of `running` (draining, terminating, then gone from the list).
    page.wait_for_function(
        """(id) => {
            const row = document.querySelector(`tr[data-instance-id="${id}"]`);
            return !row || row.children[1].textContent !== "running";
        }""",
        arg=instance,
        timeout=30_000,
    )
    kinds = {
        e["kind"] for e in server.all_events() if e["detail"].startswith(f"instance {instance}")
    }
    assert "instance_draining" in kinds, kinds
    browser.shot("draining")

    page.locator(
        'section.pool[data-pool="sim"] button[data-action="kill"][data-instances=""]'
    ).click()
    page.wait_for_selector("#flash:text-matches('pool sim: kill')")
    config = (server.session.root / "clobi.toml").read_text()
    assert re.search(r"\[pools\.sim\][^\[]*\bmax = 0\b", config), config
    page.wait_for_selector(
        'section.pool[data-pool="sim"] p:text("no live instances")', timeout=60_000
    )
    browser.shot("pool-killed")
    browser.check_clean()


def test_clobi_ui_logs_a_browser_in_once_to_an_embedded_session(
    tmp_path: Path, browser: Browser
) -> None:
    session = fast_session(tmp_path / "session")
    env = user_env(tmp_path / "home")
    job = int(clobi("submit", "--session", session.root, "--name", XSS_NAME, "--", "true", env=env))
    log_path = tmp_path / "ui.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clobi", "ui", "--session", str(session.root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        link = wait_for_line(log_path, proc, r"log in once with (http://127\.0\.0\.1:\d+\S+)")
        page = browser.page
        page.goto(link.group(1))
        assert page.url.endswith("/ui/")
        page.goto(page.url.replace("/ui/", "/ui/jobs"))
        page.wait_for_selector(f'tr[data-job-id="{job}"]')
        assert page.locator(f'tr[data-job-id="{job}"] .name').text_content() == XSS_NAME
        browser.shot("embedded-jobs")
        other = browser.context.new_page()
        other.context.clear_cookies()
        other.goto(link.group(1))  # the code was spent by the first visit
        assert "used or has expired" in (other.text_content("#login-error") or "")
        other.close()
    finally:
        code = stop(proc)
    assert code in (0, 143), log_path.read_text()
    assert "Traceback" not in log_path.read_text()
    store = session.open_store()
    try:
        made = [t for t in store.list_tokens() if t.name.startswith("ui-")]
    finally:
        store.close()
    assert len(made) == 1 and made[0].revoked  # the run's token dies with it
    browser.check_clean()
