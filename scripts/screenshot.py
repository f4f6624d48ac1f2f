"""Screenshot of a report page in headless Chromium (Debian's, as the tests use): the README's picture.

python scripts/screenshot.py .demo/report docs/report.png [--full] [--height 1400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the report folder (its index.html is shown)")
    parser.add_argument("png", type=Path)
    parser.add_argument("--full", action="store_true", help="the whole page, not the first screenful")
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": args.height})
        page.goto((args.report / "index.html").resolve().as_uri(), wait_until="load")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png), full_page=args.full)
        browser.close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
