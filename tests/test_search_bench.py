"""The search benchmark's pieces on constructed numbers (no Ray cluster, no training): regret, IQM, the bootstrap,
the curve file, ``--convert`` and ``--from-study``, the ASHA reimplementation against Ray's, and the replay."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from benchmarks import replay_curves, search_replay
from benchmarks.curves import Run, curves_json, parse_curves, read_curves
from benchmarks.search_methods import Asha, Job, Space
from benchmarks.search_stats import bootstrap_ci, iqm, normalised_regret, summarise
from foundation.errors import ConfigError


def test_normalised_regret() -> None:
    assert normalised_regret(0.8, best=0.8, median=0.6) == 0
    assert normalised_regret(0.7, best=0.8, median=0.6) == pytest.approx(0.5)
    assert normalised_regret(0.6, best=0.8, median=0.6) == pytest.approx(1)
    with pytest.raises(ValueError, match="median"):
        normalised_regret(0.5, best=0.6, median=0.6)


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # 2 cut from each end: mean of 3, 4, 5, 6
    x = np.random.default_rng(1).exponential(size=(7, 23))
    np.testing.assert_allclose(iqm(x, axis=-1), scipy.stats.trim_mean(x, 0.25, axis=-1))


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.3] * 20, np.mean) == pytest.approx([0.3, 0.3])
    x = np.random.default_rng(2).normal(1.0, 2.0, size=400)
    low, high = bootstrap_ci(x, np.mean)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))  # the normal interval the bootstrap approximates
    assert low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert bootstrap_ci(x, iqm) == bootstrap_ci(x, iqm)  # a fixed seed: the same interval again


def test_summarise_counts_runs_within_001_of_the_best() -> None:
    row = summarise([0.0, 0.1, 0.2, 1.0], gaps=[0.0, 0.005, 0.01, 0.02])
    assert row["within_0.01"] == 0.75 and row["regret_mean"] == pytest.approx(0.325)
    assert row["regret_iqm"] == pytest.approx(0.15) and row["runs"] == 4
    assert row["regret_ci"][0] <= row["regret_mean"] <= row["regret_ci"][1]


def write_set(path: Path, runs: list[Run], epochs: int = 4) -> Path:
    path.write_text(json.dumps(curves_json(epochs, runs, recorded_by="test")))
    return path


def test_curve_file_round_trip(tmp_path: Path) -> None:
    runs = [Run({"model": "a", "lr": 0.01}, {2: 0.5, 4: 0.6}, 1.5, 0), Run({"model": "a", "lr": 0.01}, {2: 0.4, 4: 0.7},
                                                                           1.6, 1)]
    curves = read_curves(write_set(tmp_path / "two-seeds.json", runs))
    assert curves.name == "two-seeds" and curves.epochs == 4 and curves.runs == runs
    assert curves.configurations() == [{"model": "a", "lr": 0.01}] and curves.seeds() == [0, 1]
    assert curves.meta == {"recorded_by": "test"}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("epochs"), "epochs"),
    (lambda d: d["configurations"][0].pop("epoch_seconds"), "needs params, curve, epoch_seconds and seed"),
    (lambda d: d["configurations"][0]["curve"].pop("4"), "ending at 4"),
    (lambda d: d["configurations"][0].update(epoch_seconds=0), "epoch_seconds must be a positive"),
    (lambda d: d["configurations"][0]["curve"].update({"2": "x"}), "curve must map epochs to numbers"),
    (lambda d: d["configurations"].append(d["configurations"][0]), "twice with the same seed"),
])
def test_curve_file_errors_name_the_file(change, message: str) -> None:
    data = curves_json(4, [Run({"model": "a"}, {2: 0.5, 4: 0.6}, 1.0, 0)])
    change(data)
    with pytest.raises(ConfigError, match=message) as caught:
        parse_curves(data, "bad", "bad.json")
    assert "--curves bad.json" in str(caught.value)


def test_replay_cli_refuses_a_bad_curve_file_or_method(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad, out = tmp_path / "bad.json", tmp_path / "out.json"
    bad.write_text(json.dumps({"epochs": 2}))
    for args in (["--curves", str(bad)], ["--methods", "nonesuch"]):
        with pytest.raises(SystemExit) as caught:
            search_replay.main([*args, "--out", str(out)])
        assert caught.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert f"--curves {bad}: expected" in err and "--methods: unknown nonesuch" in err


def test_convert_takes_each_models_median_epoch_time() -> None:
    old = {"epochs": 2, "machine": "m", "configurations": [
        {"model": "a", "lr": 0.1, "gamma": 0.9, "curve": {"1": 0.1, "2": 0.2}, "train_s": 2.0},
        {"model": "a", "lr": 0.2, "gamma": 0.9, "curve": {"1": 0.1, "2": 0.3}, "train_s": 4.0},
        {"model": "a", "lr": 0.3, "gamma": 0.9, "curve": {"1": 0.1, "2": 0.4}, "train_s": 30.0},
        {"model": "b", "lr": 0.1, "gamma": 0.9, "curve": {"1": 0.1, "2": 0.5}, "train_s": 10.0}]}
    curves = parse_curves(replay_curves.convert(old, "old.json"), "new", "new.json")
    assert [r.epoch_seconds for r in curves.runs] == [2.0, 2.0, 2.0, 5.0]
    assert curves.runs[1].params == {"model": "a", "lr": 0.2, "gamma": 0.9} and curves.runs[1].curve == {1: 0.1, 2: 0.3}
    assert curves.meta["machine"] == "m" and curves.meta["converted_from"] == "old.json"


def fake_trial(study: Path, trial_id: str, params: dict, rows: list[tuple[int, float, float]]) -> None:
    """A Tune trial folder as the study writes it: params.json, result.json (epoch, val_miou, time_this_iter_s)."""
    folder = study / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join(
        json.dumps({"epoch": e, "val_miou": v, "val_loss": 1 - v, "time_this_iter_s": t, "trial_id": trial_id}) + "\n"
        for e, v, t in rows))


def test_from_study_reads_a_grid_studys_trials(tmp_path: Path) -> None:
    study = tmp_path / "grid"
    study.mkdir()
    points = [{"model": "segformer", "init": "scratch", "lr": 0.001, "seed": s} for s in (0, 1)]
    (study / "study.json").write_text(json.dumps({"epochs": 6, "val_every": 2, "seed": 0, "dataset": "pets",
                                                  "image_size": 64, "points": points}))
    fake_trial(study, "a", {**points[0], "gamma": 0.9}, [(2, 0.3, 50.0), (4, 0.4, 20.0), (6, 0.5, 22.0)])
    fake_trial(study, "b", {**points[1], "gamma": 0.9}, [(2, 0.35, 9.0)])  # only one validation: a single value
    fake_trial(study, "c", {**points[1], "gamma": 0.9}, [(2, 0.2, 40.0), (4, 0.45, 30.0), (6, 0.55, 30.0)])
    fake_trial(study, "d", {**points[0], "gamma": 0.9}, [(2, 0.1, 40.0)])  # stopped at epoch 2 of 6: left out
    data = replay_curves.from_study(study)
    curves = parse_curves(data, "grid", "grid.json")
    assert curves.epochs == 6 and [r.seed for r in curves.runs] == [0, 1]
    assert curves.runs[0].params == {"model": "segformer", "init": "scratch", "lr": 0.001}
    assert curves.runs[0].curve == {2: 0.3, 4: 0.4, 6: 0.5}
    assert curves.runs[0].epoch_seconds == pytest.approx(10.5)  # median of 20/2 and 22/2; the first left out
    assert curves.runs[1].epoch_seconds == pytest.approx(15.0)
    assert data["trials_left_out"] == ["b", "d"]
    assert replay_curves.epoch_seconds([{"epoch": 2, "time_this_iter_s": 9.0}]) == 4.5


def test_from_study_cli_refuses_a_folder_without_trials(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "curves.json"
    with pytest.raises(SystemExit) as caught:
        replay_curves.main(["--from-study", str(tmp_path), "--out", str(out)])
    assert caught.value.code == 2 and "no Ray Tune trials" in capsys.readouterr().err and not out.exists()


def test_asha_decides_as_rays_asha_scheduler() -> None:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    curves = np.random.default_rng(3).uniform(size=(12, 8)).cumsum(axis=1)
    for grace, rf in ((1, 2), (1, 4), (2, 2), (2, 3)):
        ray_asha = ASHAScheduler(time_attr="epoch", metric="v", mode="max", max_t=8, grace_period=grace,
                                 reduction_factor=rf)
        ours = Asha(8, grace_period=grace, reduction_factor=rf)
        ended = []
        for i, curve in enumerate(curves):  # one trial at a time, as the replay runs them
            trial = SimpleNamespace(trial_id=str(i))
            ray_asha.on_trial_add(None, trial)
            ours.add(str(i))
            for epoch, value in enumerate(curve, start=1):
                stop = ray_asha.on_trial_result(None, trial, {"epoch": epoch, "v": value}) == TrialScheduler.STOP
                assert stop == (not ours.result(str(i), epoch, value)), (grace, rf, i, epoch)
                if stop:
                    break
            ray_asha.on_trial_complete(None, trial, {"epoch": epoch, "v": value})
            ours.complete(str(i), epoch, value)
            ended.append(epoch)
        assert len(set(ended)) > 1  # some trials stopped early, some did not: the case tests both


def test_space_ranges_choices_and_nearest() -> None:
    configs = [{"model": m, "lr": lr, "gamma": 0.9} for m in ("a", "b") for lr in (1e-4, 1e-3, 1e-2)]
    space = Space(configs)
    assert space.ranges == {"lr": (1e-4, 1e-2, True)} and space.choices == {"model": ['"a"', '"b"'],
                                                                               "gamma": ["0.9"]}
    assert space.nearest({"model": '"b"', "lr": 2.5e-3, "gamma": "0.9"}) == 4  # 2.5e-3 is nearer 1e-3 in log
    assert space.nearest({"model": '"a"', "lr": 5e-3, "gamma": "0.9"}) == 2


class Scripted:
    """A method that asks for the given configurations in turn, each to its last epoch."""

    def __init__(self, order: list[dict]) -> None:
        self.order = iter(order)

    def ask(self) -> Job | None:
        values = next(self.order, None)
        return None if values is None else Job(None, values, float("inf"))

    def observe(self, job: Job, epoch: int, value: float) -> bool:
        return True

    def finish(self, job: Job, epoch: int, value: float, completed: bool) -> None:
        pass


def test_replay_scores_the_pick_by_the_other_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # c is best on seed 0 but middling on seed 1; a run that sees seed 0 and picks c is scored by seed 1's curve
    runs = [Run({"model": m}, {1: v0 / 2, 2: v0}, s, 0) for m, v0, s in (("a", 0.5, 1.0), ("b", 0.6, 1.0),
                                                                        ("c", 0.9, 3.0))]
    runs += [Run({"model": m}, {1: v1 / 2, 2: v1}, s, 1) for m, v1, s in (("a", 0.5, 1.0), ("b", 0.8, 1.0),
                                                                         ("c", 0.6, 3.0))]
    curves = read_curves(write_set(tmp_path / "set.json", runs, epochs=2))
    order = [{"model": json.dumps(m)} for m in ("c", "a", "b")]
    monkeypatch.setattr(search_replay, "make_method", lambda *args: Scripted(order))
    result = search_replay.benchmark_set(curves, ["scripted"], seeds=2, budget_trials=3)
    # budget: 3 trials x 2 epochs = 6 trial-epochs; 3 x 2 x mean(1, 1, 3, ...) = 10 device-seconds
    assert result["budget"]["trial_epochs"] == 6 and result["budget"]["device_seconds"] == 10
    assert result["reference"] == {"0": {"best": 0.8, "median": 0.6}, "1": {"best": 0.9, "median": 0.6}}
    table = result["methods"]["scripted"]
    # trial-epochs: run 0 sees seed 0 (c 0.45, 0.9; a; b 0.3, 0.6); its picks are scored by seed 1 (best 0.8,
    # median 0.6): c@1 at 1.5 -> 0.3, regret 2.5; c@2 at 3 and 6 -> 0.6, regret 1. Run 1 sees seed 1 (c 0.3, 0.6; a;
    # b 0.4, 0.8), scored by seed 0 (best 0.9, median 0.6): c@1 -> 0.45, regret 1.5; c@2 -> 0.9, regret 0; at 6 its
    # lucky b@2 (0.8 on seed 1) -> 0.6, regret 1.
    epochs = table["budget_share_trial_epochs"]
    assert [epochs[s]["regret_mean"] for s in ("0.25", "0.5", "1.0")] == pytest.approx([2.0, 0.5, 1.0])
    assert [epochs[s]["within_0.01"] for s in ("0.25", "0.5", "1.0")] == [0, 0.5, 0]
    # device-seconds (c costs 3 s an epoch, a and b 1 s): at 2.5 s nothing is seen yet, scored as the worst
    # configuration's last value (0.5: regrets 1.5 and 4/3); at 5 s both runs have c@1 only (2.5, 1.5); at 10 s as
    # at 6 trial-epochs
    seconds = table["budget_share"]
    assert [seconds[s]["regret_mean"] for s in ("0.25", "0.5", "1.0")] == pytest.approx([17 / 12, 2.0, 1.0], abs=1e-4)
    assert result["default"] == "segstudy"
