"""Evaluate a checkpoint on IJB-B 1:N (S1 and S2 galleries, mixed probes).

    python evaluation/eval_ijbb_1n.py DATA_DIR --checkpoint CKPT --out DIR [f2c.evaluate options]

DATA_DIR layout: evaluation/README.md. Results: DIR/results.csv and DIR/results.md.
"""

from _forward import forward

if __name__ == "__main__":
    forward("ijbb_1n")
