"""`snakemake --report` of the smoke run, opened in headless Chromium: the page runs, and every embedded figure
decodes and draws (Debian's `chromium`, which .ci/install installs)."""

import html
import json
import re
import shutil
import subprocess

import pytest

from pgolf.stages import REPORT_FIGURES

from conftest import snakemake

pytestmark = pytest.mark.smoke
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Appended to the report: after load, draw each embedded image result on a canvas and count its non-white
# pixels, wait for the report's app to mount, and leave the findings in <pre id="pgolf-check"> for --dump-dom.
CHECK = """
<script>
window.__pgolfErrors = [];
window.addEventListener("error", e => window.__pgolfErrors.push(String(e.message)));
window.addEventListener("load", async () => {
  const out = {figures: {}, errors: window.__pgolfErrors};
  for (const [path, r] of Object.entries(results)) {
    if (!r.mime_type.startsWith("image/")) continue;
    const img = new Image();
    img.src = r.data_uri;
    try {
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "white";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      let inked = 0;
      for (let i = 0; i < px.length; i += 4) if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) inked++;
      out.figures[path] = {width: img.naturalWidth, height: img.naturalHeight, inked: inked};
    } catch (e) {
      out.figures[path] = {error: String(e)};
    }
  }
  for (let i = 0; i < 100 && !document.getElementById("app").childElementCount; i++)
    await new Promise(r => setTimeout(r, 100));
  out.app_text = document.getElementById("app").innerText;
  const pre = document.createElement("pre");
  pre.id = "pgolf-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def test_report_figures_render_in_chromium(smoke_run, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found; install it (apt-get install chromium, as .ci/install does)"
    report = tmp_path / "report.html"
    snakemake(smoke_run, "--configfile", "recipes/smoke.yaml", "--report", str(report))
    text = report.read_text()
    end = text.rindex("</body>")
    page = tmp_path / "checked.html"
    page.write_text(text[:end] + CHECK + text[end:])
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'<pre id="pgolf-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the check did not run:\n{proc.stderr[-3000:]}"
    out = json.loads(html.unescape(found[1]))
    assert out["errors"] == []
    for category in ("Training", "Size", "Scores", "Presets"):  # the report's navigation lists rules/report.smk's
        assert category in out["app_text"], category
    figures = {path.rsplit("/", 1)[-1]: fig for path, fig in out["figures"].items()}
    assert set(figures) == {f"{name}.svg" for name in REPORT_FIGURES}
    for name, fig in figures.items():
        assert "error" not in fig, (name, fig)
        assert fig["width"] > 300 and fig["height"] > 200, (name, fig)
        assert fig["inked"] > 0.02 * fig["width"] * fig["height"], (name, fig)  # drawn, not a blank page
