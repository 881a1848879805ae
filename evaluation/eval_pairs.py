"""Evaluate a checkpoint on one pair set: LFW, SLLFW, CPLFW, CALFW, CFP-FP/FF or AgeDB-30.

    python evaluation/eval_pairs.py NAME PATH --checkpoint CKPT --out DIR [f2c.evaluate options]

NAME is lfw, sllfw, cplfw, calfw, cfp_fp, cfp_ff, agedb_30 (protocol fold sizes enforced) or
pairs (any set with 10 equal folds); PATH an insightface .bin pack or a pairs file
(evaluation/README.md). Results: DIR/results.csv and DIR/results.md.
"""

import sys

from _forward import forward

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    forward(sys.argv[1], sys.argv[2:])
