"""elpv (solar-cell electroluminescence, 2,624 real 300x300 grey images) as a train/ + val/ image tree for
``patnet train``, with a fixed stratified split.

The dataset comes from PyPI (``pip install elpv-dataset``, a 91 MB wheel; licence CC BY-NC-SA 4.0): its images are
never committed here. What is committed is the split, ``experiments/elpv_split.csv`` (file name -> train / val, no
labels), drawn once by ``--make-split`` and then reused, so every run and every machine sees the same images.

Classes (``--classes``): 2 by default, as the dataset's papers (Deitsch et al., Buerhop-Lutz et al.) report it:
``defective`` when the annotators' defect probability is >= 0.5, else ``functional``; or 4, one per probability
(0, 1/3, 2/3, 1). The split is stratified by the 4-level probability and the cell type (mono / poly), 25% val.

    pip install elpv-dataset
    python experiments/elpv_prepare.py --out outputs/elpv            # writes outputs/elpv/{train,val}/<class>/
    patnet train --data outputs/elpv --img-size 160 --recipe short ...
"""
import argparse
import csv
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from patnet.data import holdout_indices

SPLIT_FILE = Path(__file__).with_name("elpv_split.csv")
VAL_FRACTION = 0.25


def read_labels() -> Tuple[Path, List[Tuple[str, float, str]]]:
    """(image folder, [(file name, defect probability, cell type)]) from the installed elpv-dataset package."""
    try:
        import elpv_dataset
    except ImportError:
        sys.exit("elpv-dataset is not installed: pip install elpv-dataset (91 MB, CC BY-NC-SA 4.0)")
    data = Path(elpv_dataset.__file__).parent / "data"
    rows = []
    for line in (data / "labels.csv").read_text().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            rows.append((Path(path).name, float(prob), kind))
    return data / "images", rows


def make_split(rows: List[Tuple[str, float, str]], seed: int = 0) -> Dict[str, str]:
    """Stratified by (probability level, cell type): VAL_FRACTION of each stratum goes to val (rows taken in file-name
    order, so the draw does not depend on the order of labels.csv)."""
    rows = sorted(rows)
    train, val = holdout_indices([(round(prob * 3), kind) for _, prob, kind in rows], VAL_FRACTION, seed)
    return {rows[i][0]: part for part, indices in (("train", train), ("val", val)) for i in indices}


def class_of(prob: float, classes: int) -> str:
    if classes == 2:
        return "defective" if prob >= 0.5 else "functional"
    return f"p{round(prob * 3)}of3"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/elpv"))
    ap.add_argument("--classes", type=int, choices=[2, 4], default=2)
    ap.add_argument("--make-split", action="store_true", help=f"draw the split again into {SPLIT_FILE.name}")
    args = ap.parse_args()
    images, rows = read_labels()
    if args.make_split or not SPLIT_FILE.exists():
        split = make_split(rows)
        with SPLIT_FILE.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "split"])
            w.writerows(sorted(split.items()))
    with SPLIT_FILE.open() as f:
        split = {r["file"]: r["split"] for r in csv.DictReader(f)}
    if set(split) != {name for name, _, _ in rows}:
        sys.exit(f"{SPLIT_FILE} does not list exactly the installed dataset's {len(rows)} images")
    if args.out.exists():
        shutil.rmtree(args.out)
    counts: Dict[Tuple[str, str], int] = defaultdict(int)
    for name, prob, _ in rows:
        part, label = split[name], class_of(prob, args.classes)
        dst = args.out / part / label / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / name, dst)
        counts[(part, label)] += 1
    for (part, label), n in sorted(counts.items()):
        print(f"{part:5s} {label:10s} {n}")


if __name__ == "__main__":
    main()
