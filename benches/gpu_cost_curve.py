"""Entry point for the GPU cost-curve run (see f2c.benchmarks.cost_curve for what it measures).

python benches/gpu_cost_curve.py --device cuda --out benches/results/gpu-<card>-<date>
"""

from f2c.benchmarks.cost_curve import main

if __name__ == "__main__":
    raise SystemExit(main())
