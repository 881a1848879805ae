"""Evaluate a checkpoint on IJB-C 1:N (G1 and G2 galleries, mixed probes).

    python evaluation/eval_ijbc_1n.py DATA_DIR --checkpoint CKPT --out DIR [f2c.evaluate options]

DATA_DIR layout: evaluation/README.md. Results: DIR/results.csv and DIR/results.md.
"""

from _forward import forward

if __name__ == "__main__":
    forward("ijbc_1n")
