"""The one-GPU study check under Ray, as one script (≤ 6 minutes on one H100/H200): the commands a user
types, on the real data at 224 px, with fractional GPUs, then what the GPU did meanwhile.

  1. `study.sweep` of both models (cnn, densenet), 224 px, short lengths, `--gpus-per-trial 0.5`
     (two trials share the GPU), test evaluation of every trial's best-validation checkpoint;
  2. `study.ablate` of DenseNet-121, 3 seeds: the transfer arm, the `--no-pretrain` arm, and the
     summary with its verdict;
  3. per trial: fixed cost (trial wall − its epochs) and training images/s; the GPU's utilisation
     and memory sampled every second by nvidia-smi over the whole run (mean, share of idle samples,
     per step), and where it idled between steps;
  4. one line: `gpu study check: PASS` or `FAIL (<reasons>)`.

    python bench/gpu_study.py                     # on the GPU machine, real data from ../shared/data
    python bench/gpu_study.py --smoke             # the same steps on the CPU, synthetic, 32 px (checks the script)

Results go to --results (default /tmp/gpu-study), never into the repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@dataclass
class Sampler:
    """nvidia-smi's utilisation.gpu and memory.used every second, with the time each line arrived."""

    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, util %, MiB)
    proc: subprocess.Popen | None = None

    def start(self) -> Sampler:
        if shutil.which("nvidia-smi") is None:
            return self
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self.proc = subprocess.Popen([*query, "-lms", "1000"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()

    def between(self, t0: float, t1: float) -> pd.DataFrame:
        df = pd.DataFrame(self.samples, columns=["t", "util", "mib"])
        return df[(df.t >= t0) & (df.t <= t1)]


def run(step: str, cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run one user command (its output to `log`); (exit status, start, end)."""
    print(f"[{time.strftime('%H:%M:%S')}] {step}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    t1 = time.time()
    print(f"    exit {rc} in {t1 - t0:.0f} s (output: {log})", flush=True)
    return rc, t0, t1


def settings(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(data flags, sweep flags, ablation flags) for the real GPU run or the CPU smoke run."""
    if args.smoke:
        data = []
        common = ["--preset", "smoke", "--image-size", "32", "--gpus-per-trial", "0", "--cpus-per-trial", "1"]
        return data, [*common, "--num-samples", "2"], [*common, "--seeds", "2"]
    data = ["--data-root", str(args.data_root / "chest_xray"), "--pretrain-root", str(args.data_root / "coronahack")]
    common = ["--preset", "paper", "--image-size", "224", "--batch-size", str(args.batch_size)]
    common += ["--epochs", str(args.epochs), "--pretrain-epochs", "1", "--grace-period", "1"]
    common += ["--gpus-per-trial", str(args.gpus_per_trial), "--cpus-per-trial", str(args.cpus_per_trial)]
    return data, [*common, "--num-samples", str(args.num_samples)], [*common, "--seeds", "3"]


def trial_figures(folder: Path) -> pd.DataFrame:
    """Per trial: model, wall, epochs' sum, fixed cost and mean training images/s."""
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    rate = epochs.groupby("trial_id")["train_images_per_s"].mean().rename("img_per_s")
    t = trials.set_index("trial_id")[["model", "stop_reason", "epochs_run", "wall_s", "epochs_s", "test_auc"]]
    t = t.join(rate)
    t["fixed_s"] = t["wall_s"] - t["epochs_s"]
    return t.reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU, synthetic data, 32 px: checks the script itself")
    p.add_argument("--data-root", type=Path, default=DATA, help="folder holding chest_xray/ and coronahack/")
    p.add_argument("--results", type=Path, default=Path("/tmp/gpu-study"), help="results folder (default %(default)s)")
    p.add_argument("--num-samples", type=int, default=4, help="sweep trials per model (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3; 1 pre-training epoch)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32, the paper's)")
    p.add_argument("--gpus-per-trial", type=float, default=0.5, help="GPU share per trial (default 0.5)")
    p.add_argument("--cpus-per-trial", type=float, default=2, help="CPUs per trial (default 2)")
    p.add_argument("--budget-s", type=float, default=360, help="the check's time limit (default 360 s)")
    args = p.parse_args(argv)
    if not args.smoke and not (args.data_root / "chest_xray").is_dir():
        p.error(f"--data-root {args.data_root}: no chest_xray/ there (or run --smoke)")
    shutil.rmtree(args.results, ignore_errors=True)
    args.results.mkdir(parents=True)
    data, sweep_flags, abl_flags = settings(args)
    py = [sys.executable, "-m"]
    out = ["--results", str(args.results)]
    sampler = Sampler().start()
    t_start = time.time()
    steps = {
        "sweep": [*py, "study.sweep", "--models", "cnn,densenet", *sweep_flags, *data, *out, "--name", "sweep"],
        "ablate transfer": [*py, "study.ablate", "--models", "densenet", *abl_flags, *data, *out, "--name", "abl"],
        "ablate no-pretrain": [
            *py, "study.ablate", "--models", "densenet", "--no-pretrain", *abl_flags, *data, *out, "--name", "abl",
        ],
        "summary": [*py, "study.ablate", "--summarize", str(args.results / "abl")],
    }  # fmt: skip
    ran = {name: run(name, cmd, args.results / f"{name.replace(' ', '-')}.log") for name, cmd in steps.items()}
    wall = time.time() - t_start
    sampler.stop()
    problems = [f"{name} exited {rc}" for name, (rc, _, _) in ran.items() if rc != 0]

    print("\nper trial (sweep): fixed cost = trial wall - its epochs; training images/s on the device")
    if (args.results / "sweep" / "trials.parquet").exists():
        t = trial_figures(args.results / "sweep")
        print(t.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        for model, g in t.groupby("model"):
            print(f"  {model}: median fixed cost {g.fixed_s.median():.1f} s, median {g.img_per_s.median():.0f} img/s")
            if not g.test_auc.notna().any():
                problems.append(f"no {model} trial has a test AUC")
    else:
        problems.append("the sweep wrote no trials.parquet")
    summary = args.results / "abl" / "ablation_summary.parquet"
    if summary.exists():
        s = pd.read_parquet(summary)
        verdicts = s["verdict"].dropna().tolist() if "verdict" in s else []
        print("\nablation verdict: " + ("; ".join(verdicts) if verdicts else "none"))
        if not verdicts:
            problems.append("the ablation summary has no verdict")
    else:
        problems.append("no ablation_summary.parquet")

    if sampler.proc is not None:
        print("\nGPU utilisation (nvidia-smi, every second): mean %, share of samples under 10 %, peak memory")
        for name, (_, t0, t1) in ran.items():
            g = sampler.between(t0, t1)
            if len(g):
                idle = (g.util < 10).mean()
                print(
                    f"  {name:<20} {g.util.mean():5.1f} %  idle {idle:4.0%}  "
                    f"{g.mib.max() / 1024:5.1f} GiB  ({len(g)} s)"
                )
        g = sampler.between(t_start, t_start + wall)
        print(f"  {'whole check':<20} {g.util.mean():5.1f} %  idle {(g.util < 10).mean():4.0%}")
    else:
        print("\nGPU utilisation: no nvidia-smi on this machine")
    if not args.smoke and wall > args.budget_s:
        problems.append(f"took {wall:.0f} s, over the {args.budget_s:.0f} s budget")
    verdict = "PASS" if not problems else f"FAIL ({'; '.join(problems)})"
    print(f"\ngpu study check: {verdict} in {wall:.0f} s")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
