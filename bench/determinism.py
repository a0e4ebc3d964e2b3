"""Which conditions change a run's numbers, bit for bit (issue 23): one pre-training and fine-tuning of
the shallow CNN on the real data at 64 px (random subsets of --n source and target-train images and
500 validation images, the full 624-image test set, so that a run takes minutes on 2 cores), run in
fresh processes, each factor side by side with the reference (one torch thread), and compared:

  repeat                   the reference command again
  threads 2                torch threads 2 instead of 1 (a Ray trial's threads are its CPUs)
  two at once              two runs at the same time, one thread each (2 concurrent trials)
  resumed                  pre-training stopped after epoch 1 (training state saved), resumed in a
                           new process (an interrupted, then resumed pre-training)
  resumed, other threads   stopped under 2 threads, resumed under 1
  OpenCV augmentation      PNEUMO_RAY_NO_FASTWARP=1: the path without a C compiler
  CPU kernels capped at AVX2   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: torch's kernels as on a
                           CPU without AVX-512 (bit-identical on one that has none)
  code REV (--code REV)    the same run with the code of git commit REV (git archive into a folder
                           of its own, with a decoded cache of its own)

and the test evaluation of one trained model at 1, 2 and 4 threads and batch sizes 128, 50 and 1.
Prints, per factor, "bit-identical" or the largest difference of the per-epoch training loss and
validation AUC (pre-training and fine-tuning), the pre-trained weights, the test probabilities and the
test AUC. Each run's record is kept under --out.

  python bench/determinism.py --data-root ../shared/data/chest_xray --pretrain-root ../shared/data/coronahack \\
      --code b9dffa1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the README's real-data configuration (the transfer search's best trial)
CONFIG = dict(model="cnn", image_size=64, lr=2.04e-3, pretrain_lr=1e-3, aug_strength=0.0871, class_weight_scale=0.514)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--pretrain-root", required=True)
    p.add_argument("--n", type=int, default=1200, help="source and target-train images (random subsets)")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    p.add_argument("--code", help="also run the code of this git commit (e.g. the one that made a table)")
    p.add_argument("--out", default=None, help="where each run's record goes (default: a new temporary folder)")
    # one run (what the driver starts per factor)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--resume", help=argparse.SUPPRESS)
    return p


# --- one run, in its own process --------------------------------------------------------------------------


def sha(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().cpu().contiguous().reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


class _Stop(Exception):
    pass


def worker(args: argparse.Namespace) -> None:
    """Pre-train, fine-tune and evaluate with `args.threads` torch threads; write record.json and the
    probabilities to args.worker. Uses only calls every version of the library since b9dffa1 has
    (pretrain, finetune, final_evaluation, predict), except for stopping and resuming."""
    import torch

    torch.set_num_threads(args.threads)
    from pneumo_ray.config.data import DataSpec
    from pneumo_ray.config.train import TrainConfig
    from pneumo_ray.data.study_data import StudyData, load_study_data
    from pneumo_ray.train.loop import predict
    from pneumo_ray.train.models import build_model
    from pneumo_ray.train.protocol import final_evaluation, finetune, pretrain

    out = Path(args.worker)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(**CONFIG, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, seed=0)
    spec = DataSpec(data_root=args.data_root, pretrain_root=args.pretrain_root, image_size=64)
    full = load_study_data(spec, quiet=True, log=None)

    def pick(s, n):
        return s.subset(np.random.default_rng(99).permutation(len(s))[:n], s.name)

    data = StudyData(pick(full.train, args.n), pick(full.val, 500), full.test, pick(full.source, args.n), full.info)
    dev = torch.device("cpu")
    t0 = time.time()
    extra = {}
    if args.stop_after or args.resume:
        from pneumo_ray.train import checkpoints

        def stop(st) -> None:
            checkpoints.save_training_state(out / "partial", st)
            if st.epoch == args.stop_after:
                raise _Stop

        extra = dict(on_state=stop)
        if args.resume:
            extra["resume"] = checkpoints.load_training_state(args.resume)
    try:
        state, meta = pretrain(cfg, data, dev, log=None, **extra)
    except _Stop:
        return
    _, result = finetune(cfg, data, dev, init_state=state, log=None)
    metrics, preds = final_evaluation(cfg, data, result, dev)
    model = build_model("cnn")
    model.load_state_dict(result.best_state)
    variants = {}
    for n in (1, 2, 4):
        torch.set_num_threads(n)
        for batch in (128, 50, 1):
            variants[f"threads {n}, batch {batch}"] = predict(
                model, full.test, normalize=result.normalize, device=dev, batch_size=batch
            )
    np.savez(out / "evaluation.npz", **{k.replace(" ", "").replace(",", "_"): v for k, v in variants.items()})
    np.save(out / "test_probs.npy", preds["probability"].to_numpy())
    keep = ("train_loss", "val_loss", "val_auc")
    record = dict(
        threads=args.threads,
        pretrain=[{k: h.get(k) for k in keep} for h in meta["history"]],
        finetune=[{k: h.get(k) for k in keep} for h in result.history],
        pretrain_sha=sha(state),
        best_sha=sha(result.best_state),
        test_auc=metrics["test_auc"],
        test_accuracy=metrics["test_accuracy"],
        seconds=round(time.time() - t0, 1),
    )
    (out / "record.json").write_text(json.dumps(record, indent=1))


# --- the driver ---------------------------------------------------------------------------------------------


def run(
    args: argparse.Namespace, out: Path, name: str, threads: int = 1, env: dict | None = None, **flags: object
) -> tuple[Path, subprocess.Popen]:
    """One worker process for factor `name`; returns its folder."""
    folder = out / name.replace(" ", "_").replace(",", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder), "--threads", str(threads)]
    cmd += ["--data-root", args.data_root, "--pretrain-root", args.pretrain_root, "--n", str(args.n)]
    cmd += ["--pretrain-epochs", str(args.pretrain_epochs), "--epochs", str(args.epochs)]
    for k, v in flags.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return folder, subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def wait(*started: tuple[Path, subprocess.Popen]) -> list[Path]:
    folders = []
    for folder, proc in started:
        if proc.wait() != 0:
            sys.exit(f"{folder}: the run failed (exit {proc.returncode})")
        folders.append(folder)
    return folders


def old_code(rev: str, out: Path) -> dict:
    """The environment that makes a worker import the library of git commit `rev`."""
    tree = out / f"code-{rev}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return {"PYTHONPATH": str(tree), "PNEUMO_RAY_CACHE": str(out / f"cache-{rev}")}


def differences(a: Path, b: Path) -> dict:
    ra, rb = (json.loads((f / "record.json").read_text()) for f in (a, b))
    out = {}
    for phase in ("pretrain", "finetune"):
        for k in ("train_loss", "val_auc"):
            out[f"{phase} {k}"] = max(abs(x[k] - y[k]) for x, y in zip(ra[phase], rb[phase]))
    out["pre-trained weights"] = "same" if ra["pretrain_sha"] == rb["pretrain_sha"] else "differ"
    pa, pb = np.load(a / "test_probs.npy"), np.load(b / "test_probs.npy")
    out["test probability"] = float(np.abs(pa - pb).max())
    out["test AUC"] = abs(ra["test_auc"] - rb["test_auc"])
    out["test accuracy"] = abs(ra["test_accuracy"] - rb["test_accuracy"])
    return out


def line(name: str, d: dict) -> str:
    numbers = [v for v in d.values() if isinstance(v, float)]
    if d["pre-trained weights"] == "same" and not any(numbers):
        result = "bit-identical"
    elif d["pre-trained weights"] == "same" and d["test probability"] == 0 and d["finetune train_loss"] == 0:
        result = "same weights and probabilities (an AUC rounded otherwise)"
    else:
        result = "differs"
    cells = [f"{v:.2g}" if isinstance(v, float) else v for v in d.values()]
    return f"| {name} | {result} | " + " | ".join(cells) + " |"


def main() -> int:
    args = get_args_parser().parse_args()
    if args.worker:
        worker(args)
        return 0
    args.data_root, args.pretrain_root = (str(Path(p).resolve()) for p in (args.data_root, args.pretrain_root))
    out = Path(args.out or tempfile.mkdtemp(prefix="pneumo-ray-determinism-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"runs under {out}; the reference first (1 torch thread)", flush=True)
    (ref,) = wait(run(args, out, "reference"))
    rows = {"repeat": wait(run(args, out, "repeat"))[0]}
    rows["threads 2"] = wait(run(args, out, "threads 2", threads=2))[0]
    at_once = wait(run(args, out, "at once a"), run(args, out, "at once b"))
    rows["two at once (each)"] = at_once[0]
    wait(run(args, out, "stopped", stop_after=1))
    rows["resumed"] = wait(run(args, out, "resumed", resume=out / "stopped" / "partial"))[0]
    wait(run(args, out, "stopped 2 threads", threads=2, stop_after=1))
    rows["resumed, other threads (2 → 1)"] = wait(
        run(args, out, "resumed other threads", resume=out / "stopped_2_threads" / "partial")
    )[0]
    rows["OpenCV augmentation"] = wait(run(args, out, "opencv", env={"PNEUMO_RAY_NO_FASTWARP": "1"}))[0]
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as on a CPU without AVX-512
    rows["CPU kernels capped at AVX2"] = wait(run(args, out, "avx2", env=avx2))[0]
    if args.code:
        rows[f"code {args.code}"] = wait(run(args, out, f"code {args.code}", env=old_code(args.code, out)))[0]
    print(f"\n{args.n} source and target-train images, {args.pretrain_epochs} + {args.epochs} epochs, 64 px, CNN:")
    head = ["pre-train loss", "pre-train val AUC", "fine-tune loss", "fine-tune val AUC", "pre-trained weights"]
    head += ["test probability", "test AUC", "test accuracy"]
    print("| factor (vs the reference, 1 thread) | result | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 2) + "|")
    for name, folder in rows.items():
        print(line(name, differences(ref, folder)), flush=True)
    ev = np.load(ref / "evaluation.npz")
    base = ev["threads1_batch128"]
    print("\nthe test evaluation of the reference's model (largest |difference| to 1 thread, batch 128):")
    for k in ev.files:
        print(f"  {k}: {float(np.abs(ev[k] - base).max()):.2g}")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
