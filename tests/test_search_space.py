"""The search-space table (pneumo_ray/config/search.py): every reader agrees with it, and a bad range
fails at the command line, at once and in one line, never inside the trials on a cluster."""

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_ray.config.arms import Arm
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.ingredients import FIELDS
from pneumo_ray.config.search import SEARCH, SEARCHED
from pneumo_ray.config.sweep import PRESETS, SweepConfig
from pneumo_ray.config.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_each_row_names_a_train_field_and_a_sweep_range_with_the_tables_default():
    sweep_fields = {f.name: f for f in dataclasses.fields(SweepConfig)}
    for s in SEARCH:
        assert s.field in TrainConfig.__dataclass_fields__, s.field
        assert sweep_fields[s.range_field].default == s.default, s.range_field
        assert s.problem(s.default, allow_fixed=s.categorical) is None
        for values in PRESETS.values():  # every preset's range is valid
            assert s.problem(tuple(values.get(s.range_field, s.default))) is None
    ranges = {f for f in sweep_fields if f.endswith("_range") or f == "pretrain_lrs"}
    assert ranges == {s.range_field for s in SEARCH}  # no searched range outside the table
    # Optuna's sampling order: the ingredients' rows come after the four the sweeps always searched
    assert SEARCHED == ("aug_strength", "class_weight_scale", "lr", "pretrain_lr", *INGREDIENT_ROWS)
    assert all(s.optional == (s.field in INGREDIENT_ROWS) for s in SEARCH)


INGREDIENT_ROWS = tuple(f for f in FIELDS if f != "tta")  # tta: an evaluation switch, not searched


def test_ingredient_rows_are_not_searched_unless_asked_so_old_seeds_propose_the_same():
    """By default Tune's space (what Optuna samples, in order) is exactly the four rows it always was,
    nothing more is recorded as the search space, and each trial keeps the ingredients' values."""
    from ray import tune

    from pneumo_ray.distributed.trials import search_space

    for preset in PRESETS.values():
        sweep = SweepConfig(**preset)
        space = search_space(sweep)
        assert list(space) == list(SEARCHED[:4]) == list(sweep.searched())
        assert list(sweep.search_ranges()) == ["aug_range", "class_weight_scale_range", "lr_range", "pretrain_lrs"]
    sweep = SweepConfig(mixup_range=(0.0, 0.4), photometric=0.5)
    space = search_space(sweep)
    assert list(space) == [*SEARCHED[:4], "mixup"] and isinstance(space["mixup"], tune.search.sample.Float)
    assert sweep.search_ranges()["mixup_range"] == [0.0, 0.4] and "ema_range" not in sweep.search_ranges()
    assert sweep.base_config("cnn").photometric == 0.5 and sweep.base_config("cnn").mixup == 0.0
    assert Arm(on=(("mixup", 0.2),)).searched(sweep.searched()) == list(SEARCHED[:4])  # the arm fixes it
    with pytest.raises(UserError, match="--photometric 0.5 fixes what --photometric-range searches"):
        SweepConfig(photometric=0.5, photometric_range=(0.0, 1.0))


def test_tune_space_and_arms_read_the_table():
    from ray import tune

    from pneumo_ray.distributed.trials import search_space

    space = search_space(SweepConfig(lr_range=(1e-5, 1e-3), pretrain_lrs=(3e-4, 1e-3)))
    assert list(space) == list(SEARCHED[:4])  # the ingredients' rows: not searched by default
    assert isinstance(space["aug_strength"], tune.search.sample.Float) and space["aug_strength"].lower == 0.0
    assert (space["lr"].lower, space["lr"].upper) == (1e-5, 1e-3)
    assert isinstance(space["lr"].sampler, tune.search.sample.LogUniform)
    assert space["pretrain_lr"].categories == [3e-4, 1e-3]
    assert Arm().searched() == list(SEARCHED)
    assert Arm(("no_pretrain", "no_augment")).searched(SEARCHED[:4]) == ["class_weight_scale", "lr"]


def test_sweep_config_rejects_a_bad_range_before_ray():
    with pytest.raises(UserError, match=r"--aug-range 0,1.5: augmentation strength must lie"):
        SweepConfig(aug_range=(0.0, 1.5))
    with pytest.raises(UserError, match="--lr-range 0.003,0.0001: LOW must be below HIGH"):
        SweepConfig(lr_range=(3e-3, 1e-4))
    assert SweepConfig(aug_range=(0.5, 0.5)).aug_range == (0.5, 0.5)  # a pinned value (bench/ray_overhead.py)


BAD = [
    (["--aug-range", "0,1.5"], "--aug-range 0,1.5: augmentation strength must lie in [0, 1]"),
    (["--lr-range", "0,1e-3"], "--lr-range 0,1e-3: fine-tuning learning rate must be positive"),
    (["--lr-range", "3e-3,1e-4"], "--lr-range 3e-3,1e-4: LOW must be below HIGH for the fine-tuning learning rate"),
    (["--class-weight-range", "-1,2"], "--class-weight-range -1,2: class-weight scale must be positive"),
    (["--class-weight-range", "0,2"], "--class-weight-range 0,2: class-weight scale must be positive"),
    (["--pretrain-lrs", "1e-3,0"], "--pretrain-lrs 1e-3,0: pre-training learning rate must be positive"),
    (["--aug-range", "0.5"], "--aug-range 0.5: give the augmentation strength range as LOW,HIGH"),
    (["--aug-range", "low,high"], "--aug-range low,high: expected LOW,HIGH (numbers)"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_range_fails_at_the_command_line_in_one_line(args, message, tmp_path):
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "study.sweep", *args, "--results", str(tmp_path), "--name", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), r.stderr
    assert time.time() - t0 < 10 and r.stdout == ""  # at once: no data, no Ray
    assert not any(tmp_path.iterdir())  # nothing written


def test_ablate_checks_the_same_ranges_without_importing_ray(tmp_path):
    code = (
        "import sys\nfrom study import ablate, common\n"
        f"rc = common.run_main(ablate.main, ['--lr-range', '0,1e-3', '--results', {str(tmp_path)!r}])\n"
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules\nsys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        "error: --lr-range 0,1e-3: fine-tuning learning rate must be positive (searched on a log scale)"
    )


def test_every_searched_flag_on_both_commands():
    from study import ablate, sweep

    for parser in (sweep.get_args_parser(), ablate.get_args_parser()):
        assert {s.flag for s in SEARCH} <= set(parser._option_string_actions)
