"""Drive the Prefect UI in a real Chromium (Debian's `chromium`, launched by Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str | None:
    """Install Debian's chromium if it is missing; return why it cannot be had, or None."""
    if Path(CHROMIUM).exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this machine to install chromium"
    command = [apt, "install", "-y", "-q", "chromium"]
    if os.geteuid() != 0 and shutil.which("sudo"):
        command = ["sudo", "-n", *command]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, env=env
    )
    if done.returncode != 0 or not Path(CHROMIUM).exists():
        return f"`{' '.join(command)}` failed: {done.stderr[-500:]}"
    return None


def _runs(ui_url: str, deployment: str) -> list[dict]:
    import httpx

    body = {"deployments": {"name": {"any_": [deployment]}}}
    return httpx.post(f"{ui_url}/api/flow_runs/filter", json=body, timeout=120).json()


def _new_run(ui_url: str, deployment: str, before: set[str], n_trials: int) -> str:
    """The run the form created: new, and with the value typed into it (the scheduler may
    add runs of its own meanwhile)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [
            r["id"] for r in _runs(ui_url, deployment)
            if r["id"] not in before
            and (r["parameters"].get("search") or {}).get("n_trials") == n_trials
        ]  # fmt: skip
        assert len(new) < 2, f"the form created {len(new)} runs"
        if new:
            return new[0]
        time.sleep(0.5)
    raise AssertionError(f"no run of {deployment} with n_trials={n_trials} came from the form")


def custom_run_from_the_ui(ui_url: str, deployment: str, n_trials: int, shots: Path) -> str:
    """Open the UI, go to the deployment, start a custom run with `search.n_trials` set, follow
    it to Completed and open its Artifacts tab. Returns the flow run id; saves screenshots."""
    from playwright.sync_api import expect, sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Pages read the SQLite-backed API, which can stall for up to ~60 s under load.
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)  # assertions wait as long as actions
            page.goto(f"{ui_url}/deployments")
            page.get_by_role("link", name=deployment).first.click()
            expect(page.get_by_text("Triggers")).to_be_visible()
            page.screenshot(path=str(shots / "deployment.png"))

            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run", exact=True).first.click()
            trials = page.locator(
                "xpath=//*[starts-with(normalize-space(text()),'N Trials')]"
                "/ancestor::*[.//input][1]//input"
            ).first
            trials.fill(str(n_trials))
            page.screenshot(path=str(shots / "custom-run-form.png"), full_page=True)
            before = {r["id"] for r in _runs(ui_url, deployment)}
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_text("scheduled to start").first).to_be_visible()

            # The toast's link comes and goes with the toast; the API names the new run.
            run_id = _new_run(ui_url, deployment, before, n_trials)
            page.goto(f"{ui_url}/runs/flow-run/{run_id}")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                badge = page.locator(".state-badge").first.inner_text().strip()
                if badge in ("Completed", "Failed", "Crashed", "Cancelled"):
                    break
                time.sleep(2)
                page.reload()
            assert badge == "Completed", f"the custom run ended {badge}"
            page.screenshot(path=str(shots / "flow-run.png"))
            page.get_by_text("Artifacts", exact=True).first.click()
            expect(page.get_by_text("driftloop-promotion").first).to_be_visible()
            page.screenshot(path=str(shots / "artifacts.png"), full_page=True)
            return run_id
        finally:
            browser.close()
