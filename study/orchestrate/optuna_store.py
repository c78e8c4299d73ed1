"""What optuna-dashboard and TensorBoard read: the study's Optuna studies in ``STORAGE/NAME/optuna.db``, and
Tune's TensorBoard event files stepped by epoch.

``optuna-dashboard sqlite:///STORAGE/NAME/optuna.db`` (the user's viewer, not a dependency) shows, live and
afterwards:
- the search, as the Optuna study ``NAME``: Ray's ``OptunaSearch`` on an SQLite RDB storage
  (``StoredOptunaSearch``). Each Tune trial is one Optuna trial (user attribute ``tune_trial_id``), with its val
  mIoU at each validation as intermediate values (step: the epoch; with several objectives, which Optuna keeps no
  intermediate values for, the user attribute ``val_miou_curve``). Once it ends it is told what happened
  (``told_state``): ``COMPLETE`` only when it ran all its epochs, with the value(s) of its **last** result, not
  its best (the best is the user attribute ``best_val_miou``); ``PRUNED`` when ASHA stopped it (its value: the
  last intermediate value), the device-time budget stopped it short of its epochs, or it was refused before
  training as ``infeasible``; ``FAIL`` when it errored. Ray's own ``OptunaSearch`` tells every stopped trial
  ``COMPLETE``. Its constraint values (``study.constraints``, <= 0:
  met) are the system attribute ``constraints``, a list in ``study.constraints.bounds`` order: what Optuna's
  samplers read (``FrozenTrial.constraints``) and what the dashboard shows as the trial's feasibility; the user
  attributes ``constraints`` (each value by its bound's name) and ``feasible`` name them. The measured cost is kept
  as user attributes.
- a grid (a search's confirm stage as the study ``NAME-confirm``; the report preset's grid as ``NAME``): each
  ended trial added by a Tune callback (``GridRecorder``) by the same rule and with the same values.

SQLite needs a local file. With a local ``--storage`` it is ``STORAGE/NAME/optuna.db`` itself. With object
storage it is a copy in the cache folder (``--cache-dir``, else ``$SEGSTUDY_CACHE``, else ``~/.cache/segstudy``)
under ``optuna/``, uploaded to ``STORAGE/NAME/optuna.db`` whenever Tune saves the searcher's state and something
changed, and at the end of each stage; the first use in a process (``--resume``) downloads it first.

``--resume`` continues the same studies in the file; the database is the truth. Ray's ``OptunaSearch`` saves its
state by pickling its Optuna study and trials, whose RDB storage reconnects, at the saving machine's path, when
unpickled; ``StoredOptunaSearch`` saves each Tune trial's Optuna trial number instead, and on restore attaches to
the file's study (``reconcile``): the warm-start points are not enqueued a second time, and the trials that Tune's
saved state (a few seconds old after a killed driver) does not know are settled. The grid's callback finds the
trials it recorded by their ``tune_trial_id``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL
from ray.tune.search.optuna import OptunaSearch

from foundation import storage
from study.constraints import (
    COST_DEVICE,
    COUNTED,
    INFEASIBLE_KEY,
    MEASURED,
    VIOLATIONS_KEY,
    constraint_values,
    directions,
)
from study.layout import tune_results
from study.orchestrate.stops import staging_dir
from study.settings import StudySettings

log = logging.getLogger(__name__)

OPTUNA_FILE = "optuna.db"
CONFIRM_SUFFIX = "-confirm"
METRIC = "val_miou"
TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute that names an Optuna trial's Tune trial
BEST = "best_val_miou"
CURVE = "val_miou_curve"  # with several objectives: {epoch: val mIoU}, Optuna's intermediate values being one-objective
# The system attribute that optuna-dashboard (0.21: ``trial_system_attrs["constraints"]``) and Optuna's samplers
# (optuna.study._constrained_optimization) read, a list of values; Trial.set_constraint's one attribute per bound
# (``constraints:NAME``) the dashboard does not show. The same key names the user attribute {bound: value}.
CONSTRAINT_ATTR = "constraints"
FEASIBLE = "feasible"
_OPENED: set[str] = set()  # local copies of remote files brought up to date in this process


class OptunaDatabase:
    """``STORAGE/NAME/optuna.db`` (a local path or a storage URI) and the local SQLite file behind it."""

    def __init__(self, uri: str, cache_dir: str | None = None) -> None:
        self.uri = uri if storage.is_remote(uri) else str(Path(uri).absolute())
        self.cache_dir = cache_dir
        self._uploaded: tuple[int, int] | None = None

    @property
    def local(self) -> Path:
        if not storage.is_remote(self.uri):
            return Path(self.uri)
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        return Path(self.cache_dir or storage.default_cache_dir()) / "optuna" / key / OPTUNA_FILE

    @property
    def url(self) -> str:
        return f"sqlite:///{self.local}"

    def open(self) -> optuna.storages.RDBStorage:
        """An RDB storage on the local file. The first call in a process makes a remote file's local copy that
        file (downloaded), or removes a stale copy when there is none yet (a new study)."""
        local = self.local
        if storage.is_remote(self.uri) and str(local) not in _OPENED:
            if storage.exists(self.uri):
                storage.download(self.uri, local)
            else:
                for stale in (local, local.with_name(local.name + "-journal")):
                    stale.unlink(missing_ok=True)
            _OPENED.add(str(local))
        local.parent.mkdir(parents=True, exist_ok=True)
        # A reader (optuna-dashboard) briefly locks the file: wait for it rather than fail a write.
        return optuna.storages.RDBStorage(self.url, engine_kwargs={"connect_args": {"timeout": 60}})

    def sync_up(self) -> None:
        """Upload the local copy to object storage when it changed since the last upload (nothing to do for a
        local ``--storage``)."""
        if not storage.is_remote(self.uri) or not self.local.is_file():
            return
        stat = self.local.stat()
        if (stat.st_mtime_ns, stat.st_size) != self._uploaded:
            storage.upload(self.local, self.uri)
            self._uploaded = (stat.st_mtime_ns, stat.st_size)


def database(settings: StudySettings) -> tuple[OptunaDatabase, str]:
    """The study's database and the Optuna study name of this stage: ``NAME``, or ``NAME-confirm`` for a
    search's confirm stage (run as the Tune experiment ``STORAGE/NAME/confirm``, ``StudySettings.confirm_stage``)."""
    root, name = settings.study_dir, settings.name
    if root != settings.experiment_dir:
        name = storage.display(root).rstrip("/").rsplit("/", 1)[-1] + CONFIRM_SUFFIX
    return OptunaDatabase(storage.join(root, OPTUNA_FILE), settings.cache_dir), name


def _set_metric_name(study: optuna.Study, names: list[str] | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names or [METRIC])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def told_state(result: dict | None, error: bool, epochs: int | None) -> TrialState:
    """What Optuna is told a trial ended as, from what is known of it: ``FAIL`` when it errored or ended without
    a val mIoU; ``PRUNED`` when its last result is short of its ``epochs`` (ASHA or the budget stopped it, or it
    ended short)
    or it was never trained (``infeasible``: a constraint checked before training); ``COMPLETE`` only when it
    ran all its epochs (``epochs`` None: not known, taken as complete)."""
    result = result or {}
    if result.get(INFEASIBLE_KEY):
        return TrialState.PRUNED
    if error or not _finite(result.get(METRIC)):
        return TrialState.FAIL
    if epochs is not None and int(result.get("epoch", 0)) < epochs:
        return TrialState.PRUNED
    return TrialState.COMPLETE


def told_values(state: TrialState, result: dict | None, metrics: list[str]) -> list[float] | None:
    """The objective values a ``COMPLETE`` trial is told (None otherwise: a pruned single-objective trial's
    value is its last intermediate value, Optuna's own rule)."""
    if state != TrialState.COMPLETE:
        return None
    values = [(result or {}).get(metric) for metric in metrics]
    return [float(v) for v in values] if all(_finite(v) for v in values) else None


def constraint_attributes(constraints: dict[str, dict[str, float]], result: dict | None,
                          state: TrialState) -> tuple[dict[str, Any], dict[str, Any]]:
    """(system, user) attributes of a trial told ``state``: its constraint values as the list Optuna's samplers and
    optuna-dashboard read, and by name with its feasibility; none for a ``FAIL`` (as Optuna's samplers do)."""
    values = constraint_values(constraints, result or {}) if state != TrialState.FAIL else {}
    if not values:
        return {}, {}
    return {CONSTRAINT_ATTR: list(values.values())}, {CONSTRAINT_ATTR: values,
                                                      FEASIBLE: all(v <= 0 for v in values.values())}


def cost_attributes(result: dict | None) -> dict[str, Any]:
    """The measured and counted cost in a trial's result, kept as user attributes (the dashboard shows them)."""
    keys = (*MEASURED, *COUNTED, COST_DEVICE, VIOLATIONS_KEY)
    return {key: result[key] for key in keys if result and key in result and result[key] is not None}


class StoredOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` with its study in ``optuna.db`` (see the module docstring): intermediate values
    stepped by epoch, including the result ASHA stopped a trial at (Ray's own skips it), each trial told what
    really happened (``told_state``: Ray's tells every stopped trial ``COMPLETE``), its constraint values set,
    one objective or several, and a resume that continues the file's study."""

    def __init__(self, db: OptunaDatabase, study_name: str, epochs: int | None = None,
                 constraints: dict[str, dict[str, float]] | None = None, **kwargs: Any) -> None:
        self._database = db
        self._epochs, self._constraints = epochs, dict(constraints or {})
        self._reported: dict[str, dict[int, float]] = {}  # Tune trial id -> {epoch: val mIoU} told to Optuna
        super().__init__(study_name=study_name, **kwargs)  # the storage is opened when Tune sets the space

    @property
    def _metrics(self) -> list[str]:
        return list(self._metric) if isinstance(self._metric, list) else [self._metric]

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if isinstance(self._metric, list):  # several objectives: Tune's metric is the scheduler's (val mIoU)
            metric, mode = None, None
        return super().set_search_properties(metric, mode, config, **spec)

    def _setup_study(self, mode: str | list) -> None:
        self._storage = self._database.open()
        names = optuna.get_all_study_names(self._storage)
        resumed = self._study_name in names and bool(
            optuna.load_study(study_name=self._study_name, storage=self._storage).get_trials(deepcopy=False))
        points = self._points_to_evaluate
        if resumed:  # it was warm-started when it began: its points are in the file already
            self._points_to_evaluate = []
        try:
            super()._setup_study(mode)
        finally:
            self._points_to_evaluate = points
        if not resumed:
            _set_metric_name(self._ot_study, self._metrics)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return params

    def _report(self, trial_id: str, result: dict) -> None:
        """One intermediate value per validation (step: the epoch). With several objectives Optuna has no
        intermediate values (``Trial.report`` raises): the val mIoU curve is the user attribute ``CURVE``."""
        several = len(self._metrics) > 1
        value, epoch = result.get(METRIC if several else self._metrics[0]), result.get("epoch")
        reported = self._reported.setdefault(trial_id, {})
        if not _finite(value) or epoch is None or int(epoch) in reported:
            return
        reported[int(epoch)] = float(value)
        trial = self._ot_trials[trial_id]
        try:
            if several:
                trial.set_user_attr(CURVE, {str(k): v for k, v in sorted(reported.items())})
            else:
                trial.report(float(value), int(epoch))
        except (RuntimeError, ValueError) as exc:  # finished in the file already (see reconcile)
            log.debug("optuna: result of trial %s not recorded: %s", trial_id, exc)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return
        if result:
            self._report(trial_id, result)  # the result ASHA stopped the trial at never reached on_trial_result
        trial, reported = self._ot_trials[trial_id], self._reported.get(trial_id)
        state = told_state(result, error, self._epochs)
        try:
            for key, value in {**cost_attributes(result), **({BEST: max(reported.values())} if reported else {})
                               }.items():
                trial.set_user_attr(key, value)
            system, user = constraint_attributes(self._constraints, result, state)  # pruned trials' too
            for key, value in system.items():  # before tell: the sampler's after_trial reads them
                trial.storage.set_trial_system_attr(trial._trial_id, key, value)
            for key, value in user.items():
                trial.set_user_attr(key, value)
            values = told_values(state, result, self._metrics)
            if state == TrialState.COMPLETE and values is None:  # an objective missing from the last result
                state = TrialState.FAIL
            self._ot_study.tell(trial, values if values is None or len(values) > 1 else values[0], state=state)
        except (RuntimeError, ValueError) as exc:  # finished in the file already (see reconcile)
            log.warning("optuna: trial %s not told: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Ray's save pickles the Optuna study and trials, whose RDB storage connects to its file when unpickled (at
        the path of the machine that saved it). This state names each Tune trial's Optuna trial by its number."""
        self._database.sync_up()  # first: the file on storage is never older than the state that refers to it
        state = {**self.__dict__, "_storage": None, "_ot_study": None,
                 "_ot_trials": {trial_id: trial.number for trial_id, trial in self._ot_trials.items()}}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        numbers = state.pop("_ot_trials")
        self.__dict__.update(state)
        self.reconcile(numbers)

    def reconcile(self, numbers: dict[str, int]) -> None:
        """Attach the restored searcher (``numbers``: each Tune trial's Optuna trial) to the study in the file, and
        make the file agree with Tune's restored state: a trial Tune's state has as running but the file as
        finished stays finished; a trial the file has as running but Tune's state does not know (Tune asked for it
        after its last save; it runs again as a new trial) is failed, and enqueued again if it was a warm-start
        point."""
        self._storage = self._database.open()
        study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                  pruner=optuna.pruners.NopPruner())
        in_file = {t.number: t for t in study.get_trials(deepcopy=False)}
        trials = {}
        for trial_id, number in numbers.items():
            frozen = in_file.get(number)
            if frozen is None:
                log.warning("optuna: trial %s is not in %s; it is not recorded there", trial_id,
                            storage.display(self._database.uri))
                continue
            if frozen.state.is_finished():
                self._completed_trials.add(trial_id)
            trials[trial_id] = optuna.trial.Trial(study, frozen._trial_id)  # the storage's id of that number
        for frozen in in_file.values():
            if frozen.state == TrialState.RUNNING and frozen.number not in set(numbers.values()):
                study.tell(frozen.number, state=TrialState.FAIL)
                if "fixed_params" in frozen.system_attrs:
                    study.enqueue_trial(frozen.system_attrs["fixed_params"])
        self._ot_study, self._ot_trials = study, trials


class StudyMirror(tune.Callback):
    """Uploads ``optuna.db`` at the end of a stage when ``--storage`` is object storage."""

    def __init__(self, db: OptunaDatabase) -> None:
        self.db = db

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.db.sync_up()


def grid_distributions(points: list[dict[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna distributions spanning a grid's points (every trial of the study is recorded against these)."""
    values = {k: [p[k] for p in points] for k in points[0]}
    found: dict[str, BaseDistribution] = {}
    for name, vals in values.items():
        if name == "seed":
            found[name] = IntDistribution(int(min(vals)), int(max(vals)))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            found[name] = FloatDistribution(float(min(vals)), float(max(vals)), log=name == "lr" and min(vals) > 0)
        else:
            found[name] = CategoricalDistribution(sorted(set(vals), key=str))
    return found


class GridRecorder(StudyMirror):
    """Records each ended trial of a grid (the confirm stage, the report's grid) in ``optuna.db`` as a finished
    Optuna trial, by the searcher's rule (``told_state``): ``COMPLETE`` with its objective values (the val mIoU
    of its last result) when it ran all its epochs, ``PRUNED`` when it ended short or was infeasible, ``FAIL``
    when it errored; every validation as an intermediate value (several objectives: the user attribute
    ``CURVE``), its constraint values and its cost."""

    def __init__(self, db: OptunaDatabase, study_name: str, points: list[dict[str, Any]], experiment_dir: str,
                 epochs: int | None = None, objectives: dict[str, str] | None = None,
                 constraints: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__(db)
        self.study_name, self.distributions = study_name, grid_distributions(points)
        self.experiment_dir, self.epochs = experiment_dir, epochs
        self.objectives, self.constraints = dict(objectives or {METRIC: "max"}), dict(constraints or {})
        self.study: optuna.Study | None = None
        self.recorded: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: the open study stays behind
        return {**self.__dict__, "study": None, "recorded": set()}

    def setup(self, **info: Any) -> None:
        directions = ["minimize" if mode == "min" else "maximize" for mode in self.objectives.values()]
        self.study = optuna.create_study(storage=self.db.open(), study_name=self.study_name, directions=directions,
                                         load_if_exists=True)
        self.recorded = {t.user_attrs.get(TUNE_TRIAL_ID) for t in self.study.get_trials(deepcopy=False)}
        _set_metric_name(self.study, list(self.objectives))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.record(trial)
        self.db.sync_up()

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.record(trial, failed=True)
        self.db.sync_up()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # also those that ended before a killed driver's last save of Tune's state
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.record(trial, failed=trial.status == Trial.ERROR)
        super().on_experiment_end(trials, **info)

    def record(self, trial: Trial, failed: bool = False) -> None:
        if self.study is None or trial.trial_id in self.recorded:
            return
        curve = self.curve(trial)
        last = {**(trial.last_result or {}), **({"epoch": max(curve), METRIC: curve[max(curve)]} if curve else {})}
        state = told_state(last, failed, self.epochs)
        values = told_values(state, last, list(self.objectives))
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL
        if values is None and state == TrialState.PRUNED and len(self.objectives) == 1 and curve:
            values = [curve[max(curve)]]  # a pruned trial's value: its last intermediate value, as Optuna's tell
        several = len(self.objectives) > 1
        params = {k: trial.config[k] for k in self.distributions if k in trial.config}
        system, user = constraint_attributes(self.constraints, last, state)
        attrs = {TUNE_TRIAL_ID: trial.trial_id, **({BEST: max(curve.values())} if curve else {}),
                 **cost_attributes(last), **({CURVE: {str(k): v for k, v in curve.items()}} if several else {}),
                 **user}
        try:
            self.study.add_trial(optuna.trial.create_trial(
                state=state, values=values, params=params, distributions={k: self.distributions[k] for k in params},
                user_attrs=attrs, intermediate_values={} if several else curve,
                system_attrs=system))
        except ValueError as exc:  # a parameter outside the grid's distributions: keep the study going
            log.warning("optuna: trial %s not recorded in %s: %s", trial.trial_id, self.study_name, exc)
        self.recorded.add(trial.trial_id)

    def curve(self, trial: Trial) -> dict[int, float]:
        """{epoch: val mIoU} of every result Tune recorded for ``trial``: on storage (which has the results from
        before a resume), then in the driver's copy (newer; after a resume, only the results since)."""
        found: dict[int, float] = {}
        for folder in (self.experiment_dir, staging_dir(trial)):
            found.update({int(r["epoch"]): float(r[METRIC]) for r in tune_results(folder, trial.trial_id)
                          if _finite(r.get(METRIC)) and "epoch" in r})
        return dict(sorted(found.items()))


class EpochTBXLogger(TBXLoggerCallback):
    """Tune's TensorBoard logger (``tensorboard --logdir STORAGE/NAME``: ``ray/tune/val_miou``, ``val_loss``,
    ``train_loss``, ``lr``... per trial), with the epoch as the step: Tune's own step counts results, and a trial
    reports once per validation. Listed among the callbacks, it replaces the logger Tune would add."""

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        if "epoch" in result:
            result = {**result, TIMESTEPS_TOTAL: int(result["epoch"])}
        super().log_trial_result(iteration, trial, result)


def optuna_callbacks(settings: StudySettings) -> list:
    """The callbacks that keep ``optuna.db`` and the TensorBoard files (the search's study is the searcher's)."""
    db, name = database(settings)
    if settings.searcher == "grid":
        return [GridRecorder(db, name, settings.grid_points(), settings.experiment_dir, settings.epochs,
                             settings.objectives, settings.constraints), EpochTBXLogger()]
    return [StudyMirror(db), EpochTBXLogger()]


def optuna_search(settings: StudySettings, **kwargs: Any) -> StoredOptunaSearch:
    """The search's searcher on ``optuna.db``: its objectives (one metric, or a list with several), the study's
    epochs (a trial short of them is ``PRUNED``) and constraints; ``kwargs`` go to Ray's ``OptunaSearch``."""
    db, name = database(settings)
    metrics, modes = directions(settings.objectives)
    kwargs.setdefault("metric", metrics if len(metrics) > 1 else metrics[0])
    kwargs.setdefault("mode", modes if len(modes) > 1 else modes[0])
    return StoredOptunaSearch(db, name, epochs=settings.epochs, constraints=settings.constraints, **kwargs)
