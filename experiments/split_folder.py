"""A folder of symbolic links to one training run's held-out test slices, with their boxes.

Usage (from the repository root)::

    python experiments/split_folder.py RUN_DIR DATA OUT

``RUN_DIR`` is what ``mriscan train`` wrote (its ``split.json`` names the store and the test
positions), ``DATA`` the class folders the store was ingested from, ``OUT`` a new folder:
``OUT/<class>/<file>`` links to ``DATA/<class>/<file>`` for every test slice, and
``OUT/boxes.csv`` holds the rows of ``DATA/boxes.csv`` (when present) for those files. Used to
run ``mriscan explain MODEL OUT --boxes OUT/boxes.csv`` on a model's own test split
(experiments/ACCURACY.md rows 42, 49, 64).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from mriscan.store import ImageStore


def main(run: Path, data: Path, out: Path) -> None:
    split = json.loads((run / "split.json").read_text())
    with ImageStore.open(split["store"]) as store:
        records = store.index.records
        names = [records[i].source for i in split["test"]["indices"]]
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        if not (out / name).exists():
            os.symlink(data / name, out / name)
    boxes = data / "boxes.csv"
    kept = 0
    if boxes.is_file():
        rows = list(csv.DictReader(boxes.open()))
        wanted = set(names)
        with (out / "boxes.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                if row["file"] in wanted:
                    writer.writerow(row)
                    kept += 1
    print(f"{len(names)} test slices linked into {out}; {kept} with a box")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
