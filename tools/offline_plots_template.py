"""Build ``.dvc/plots/offline.html``: the page template of ``dvc plots show`` with Vega inlined.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without internet it renders blank.
This template carries the same versions DVC asks for, inline (about 0.8 MB; BSD-3-Clause, the Vega
project), and ``.dvc/config`` names it (``plots.html_template``), so ``dvc plots show`` works offline.

Run: ``python tools/offline_plots_template.py`` (needs ``npm``, which fetches the three packages once).
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
# The versions dvc_render's default page loads from the CDN (dvc_render/vega.py).
PACKAGES = {
    "vega@5.20.2": "vega.min.js",
    "vega-lite@5.2.0": "vega-lite.min.js",
    "vega-embed@6.18.2": "vega-embed.min.js",
}


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, build in PACKAGES.items():
            tgz = subprocess.run(
                ["npm", "pack", "--silent", package], cwd=tmp, capture_output=True, text=True, check=True
            )
            with tarfile.open(Path(tmp) / tgz.stdout.strip().splitlines()[-1]) as tar:
                member = tar.extractfile(f"package/build/{build}")
                assert member is not None, f"{package}: no build/{build}"
                code = member.read().decode("utf-8").replace("</script", "<\\/script")
            scripts.append(f"<!-- {package} (BSD-3-Clause, https://vega.github.io) -->\n<script>{code}</script>")
    page = PAGE.replace("{inline_scripts}", "\n".join(scripts))
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page, encoding="utf-8")
    print(f"wrote {TEMPLATE.relative_to(ROOT)} ({TEMPLATE.stat().st_size // 1024} KB)")


# DVC fills {plot_divs} (and {refresh_tag}); {scripts}, where DVC would put the CDN's script tags, is left out.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    {inline_scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""

if __name__ == "__main__":
    main()
