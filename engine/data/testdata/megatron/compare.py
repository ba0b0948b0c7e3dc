"""Compares fixtures written by generate.py --out DIR (another megatron-core version, another host) with
the committed ones: the corpora byte for byte, every fixture's indices and samples value for value (the
generator's version aside). Exits 1 on the first difference.

    python compare.py DIR
"""

import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    other = sys.argv[1]
    names = sorted(n for n in os.listdir(HERE) if n.endswith((".json.gz", ".bin", ".idx")))
    for name in names:
        a, b = os.path.join(HERE, name), os.path.join(other, name)
        if name.endswith(".json.gz"):
            with gzip.open(a, "rt") as f:
                fa = json.load(f)
            with gzip.open(b, "rt") as f:
                fb = json.load(f)
            print(name, fa.pop("generator"), "vs", fb.pop("generator"))
            same = fa == fb
        else:
            with open(a, "rb") as f, open(b, "rb") as g:
                same = f.read() == g.read()
        if not same:
            print("DIFFERENT:", name)
            sys.exit(1)
    print(len(names), "files equal")


if __name__ == "__main__":
    main()
