"""Open report/index.html in headless Chromium: every image loads (naturalWidth > 0) and the page
logs no errors.

No extra Python packages: a COPY of the page gets a small script (first thing in <head>) that
records window errors (uncaught exceptions and failed resource loads, caught in the capture
phase), wraps console.error, and on window load writes the images' naturalWidth and the errors as
JSON into a <pre> element. ``chromium --dump-dom`` prints the DOM after load (with a virtual-time
budget so loading finishes), and the test reads the JSON back. A negative control (a broken image
and a console.error) proves the harness sees failures.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis.report import build_report
from analysis.synthetic import write_synthetic_results

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) { window.__errors.push('failed to load ' + (t.src || t.href)); }
  else { window.__errors.push('error: ' + e.message); }
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('unhandled rejection: ' + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute('src'), naturalWidth: i.naturalWidth, complete: i.complete};
  });
  var pre = document.createElement('pre');
  pre.id = '__check__';
  pre.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def probe(page: Path, tmp: Path, extra_body: str = "") -> dict:
    text = page.read_text(encoding="utf-8")
    text, n = re.subn(r"<head>", "<head>" + PROBE, text, count=1)
    assert n == 1, "index.html has no <head>"
    if extra_body:
        text = text.replace("</body>", extra_body + "</body>")
    copy = page.with_name(f"_browser_check_{len(extra_body)}.html")
    copy.write_text(text, encoding="utf-8")
    profile = tmp / f"chromium-profile-{len(extra_body)}"
    try:
        res = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="__check__">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the probe did not run (rc {res.returncode}); stderr tail: {res.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "out"
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 10.0, 1), ("tcdlgm", 1.0, 2), ("tcdlgm", 10.0, 2),
            ("seatbelt", 1.0, 2), ("seatbelt", 10.0, 2)]
    write_synthetic_results(out, grid=grid, seeds=(0, 1), pairs=2, n_lam=4)
    return build_report(out, log_to_mlflow=False)


def test_every_image_loads_and_no_console_errors(report, tmp_path):
    n_img = len(re.findall(r"<img ", (report / "index.html").read_text(encoding="utf-8")))
    assert n_img >= 10
    result = probe(report / "index.html", tmp_path)
    assert len(result["images"]) == n_img
    broken = [i for i in result["images"] if not (i["complete"] and i["naturalWidth"] > 0)]
    assert broken == []
    assert result["errors"] == []


def test_the_probe_sees_broken_images_and_errors(report, tmp_path):
    result = probe(report / "index.html", tmp_path,
                   extra_body='<img src="no-such-figure.png"><script>console.error("probe check")</script>')
    widths = {i["src"]: i["naturalWidth"] for i in result["images"]}
    assert widths["no-such-figure.png"] == 0
    assert any("no-such-figure.png" in e for e in result["errors"])
    assert "console.error: probe check" in result["errors"]
