"""Convert a dataset to the ``folder`` layout, e.g. to start a task of one's own from Oxford-IIIT Pet:

    python -m study.data.convert --from pets --root R --to folder --out OUT

Each split the source has (train, val, test, as segstudy splits it) becomes ``OUT/images/<split>/`` (the
original image files, copied byte for byte) and ``OUT/annotations/<split>/<stem>.png`` (the class indices
the source's label mapping gives, 255 where ignored), with ``OUT/id2label.json`` naming the classes. The
``folder`` format then decodes the very same tensors as the source format.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from foundation.files import check_new_folder
from study.cli import OneLineParser, exit_cli
from study.config import SPLITS
from study.data.formats import FORMATS, ID2LABEL_FILE, open_source

log = logging.getLogger(__name__)


def convert_to_folder(name: str, root: str | Path, out: str | Path) -> Path:
    """Write ``name``'s splits under ``root`` into ``out`` in the folder layout; refuses a non-empty ``out``."""
    out = Path(out)
    check_new_folder(out, "--out")
    sources = {split: open_source(name, split, root) for split in SPLITS}
    written = 0
    for split, source in sources.items():
        for k, (image_file, label_file) in enumerate(zip(source.image_files, source.label_files, strict=True)):
            target = out / "images" / split / image_file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_file, target)
            label = np.asarray(source.dataset[source.indices[k]][1])
            mask = out / "annotations" / split / f"{image_file.stem}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.label_to_class(label, label_file)).save(mask)
            written += 1
    classes = next(iter(sources.values())).class_names
    (out / ID2LABEL_FILE).write_text(json.dumps({str(k): c for k, c in enumerate(classes)}, indent=1) + "\n")
    log.info("wrote %d %s pairs in the folder layout under %s", written, name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.data.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", choices=[f for f in FORMATS if f != "folder"], required=True)
    parser.add_argument("--to", choices=["folder"], default="folder")
    parser.add_argument("--root", required=True, help="the source dataset's root (as --data-root)")
    parser.add_argument("--out", required=True, help="a new folder for the converted dataset")
    args = parser.parse_args(argv)
    convert_to_folder(args.source, args.root, args.out)
    return 0


if __name__ == "__main__":
    exit_cli("study.data.convert", main)
