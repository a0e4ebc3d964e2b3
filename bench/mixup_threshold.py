"""Does mixup move the decision rule? A 1-D simulation with the loop's own losses.

The decision threshold is fixed by the loss before any score is seen (analysis/metrics.py
decision_threshold): W1/(W0 + W1), where a model trained on the class-weighted BCE outputs its
probability at likelihood ratio 1. Mixup keeps each label's class weight (train/loop.py _mixup_bce),
so each class's total weight is unchanged, but the minimiser is not known in closed form. Here two
unit-variance Gaussian classes (means −1 and +1, 30 % / 70 %, so likelihood ratio 1 is at x = 0) train
a small MLP with and without mixup, with the README's class-weight scale 0.514 and without class
weights; printed: the rule's threshold, the model's output at x = 0 and where it crosses the
threshold (0 for the Bayes rule), mean ± SD over seeds.

    python bench/mixup_threshold.py [--seeds 6] [--alpha 0.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_ray.analysis.metrics import decision_threshold  # noqa: E402
from pneumo_ray.train.loop import _mixup_bce, _weighted_bce  # noqa: E402

N0, N1 = 3000, 7000


def simulate(alpha: float, seed: int, scale: float, steps: int = 3000) -> tuple[float, float]:
    """(model output at likelihood ratio 1, where the model crosses the rule's threshold)."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.r_[rng.normal(-1, 1, N0), rng.normal(1, 1, N1)].astype(np.float32))[:, None]
    y = torch.from_numpy(np.r_[np.zeros(N0), np.ones(N1)].astype(np.float32))
    w = torch.tensor([scale * N1 / N0, 1.0])
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=gen)
        xb, yb = x[idx], y[idx]
        if alpha:
            lam = float(rng.beta(alpha, alpha))
            loss = _mixup_bce(net(lam * xb + (1 - lam) * xb.flip(0)).squeeze(1), yb, w, lam)
        else:
            loss = _weighted_bce(net(xb).squeeze(1), yb, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = decision_threshold(tuple(w.tolist()), (N0, N1))
    with torch.no_grad():
        grid = torch.linspace(-4, 4, 801)[:, None]
        q = torch.sigmoid(net(grid)).squeeze(1)
        return torch.sigmoid(net(torch.zeros(1, 1))).item(), grid[(q >= t).nonzero()[0]].item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--alpha", type=float, default=0.2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for scale, what in ((0.514, "class-weight scale 0.514"), (N0 / N1, "no class weights")):
        t = decision_threshold((scale * N1 / N0, 1.0), (N0, N1))
        for alpha in (0.0, args.alpha):
            r = np.array([simulate(alpha, s, scale) for s in range(args.seeds)])
            print(
                f"{what:25s} mixup {alpha:<4g}: threshold {t:.3f}; output at likelihood ratio 1 "
                f"{r[:, 0].mean():.3f} ± {r[:, 0].std(ddof=1):.3f}; crosses the threshold at x = "
                f"{r[:, 1].mean():+.3f} ± {r[:, 1].std(ddof=1):.3f} (Bayes: 0; class SD 1)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
