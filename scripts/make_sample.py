"""Make a small tagged sample corpus with ImageMagick (no downloads): nested folders of real images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TREE = {
    "animals/birds/robin": ["plasma:red-brown", "gradient:red-orange", "plasma:orange-brown"],
    "animals/birds/sparrow": ["plasma:tan-gray", "gradient:gray-tan"],
    "animals/cats": ["plasma:black-white", "gradient:orange-white", "plasma:gray-orange"],
    "landscapes/sea": ["gradient:navy-skyblue", "plasma:blue-cyan"],
    "landscapes/forest/Autumn": ["plasma:darkgreen-orange", "gradient:green-gold"],
    "": ["gradient:white-black"],
}


def main(root: Path) -> None:
    made = 0
    for rel, sources in TREE.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i, source in enumerate(sources):
            ext = ["jpg", "png", "JPG"][i % 3]
            target = folder / f"img{i:02}.{ext}"
            if not target.exists():
                # -seed makes plasma deterministic and PNGs carry no date chunks, so every clone's demo makes
                # the same bytes (a demo Azurite left running from another clone then finds the same sets)
                cmd = ["convert", "-seed", str(100 + i), "-size", "160x120", source]
                cmd += ["-define", "png:exclude-chunk=date,time", str(target)]
                subprocess.run(cmd, check=True)
                made += 1
    (root / "animals" / "README.txt").write_text("not an image: ignored by the crawl\n")
    print(f"sample corpus in {root}: {sum(len(v) for v in TREE.values())} images ({made} new)", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".demo/photos"))
