"""Headless Chromium for the tests: render a local page offline and report its console messages."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.report import CONTENT_SECURITY_POLICY

WINDOW = (1200, 1600)


def chromium_binary() -> str:
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if binary is None:
        # Not a skip: the report is checked in a browser or not at all. CI installs it.
        pytest.fail("chromium is not installed; the browser test needs it: "
                    "run `apt-get update && apt-get install -y chromium` (as root)")
    return binary


def run_chromium(page: Path | str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless chromium on a local page (or a loopback URL), isolated, console messages on stderr."""
    command = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", f"--window-size={WINDOW[0]},{WINDOW[1]}", *extra, page.as_uri() if isinstance(page, Path) else page,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def console_messages(stderr: str) -> list[str]:
    # Chromium logs every console message (errors, CSP violations, failed loads) as a
    # "...:CONSOLE..." line; the report has no scripts, so any such line is a problem.
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


# Counts loaded images into the title, which --dump-dom then shows; only ever added to a copy.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.title = "images " + images.filter(i => i.complete && i.naturalWidth > 0).length + "/" + images.length;
});
</script>"""


def with_image_probe(page: str) -> str:
    # The copy must still forbid external images, so only inline scripts are added to the policy.
    return (page.replace(CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY + "; script-src 'unsafe-inline'")
                .replace("</body>", IMAGE_PROBE + "\n</body>"))


def probed_title(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert match, dom[:500]
    return match.group(1)




def rendered_text(url: str, profile: Path, wait_ms: int = 20000) -> str:
    """The visible text of a web app's page once its scripts have run (``wait_ms`` of virtual time)."""
    dom = run_chromium(url, profile, f"--virtual-time-budget={wait_ms}", "--dump-dom").stdout
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))
