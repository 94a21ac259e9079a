"""An Optuna search continued in its sweep dir: the same command with `hydra.sweep.dir=<its dir>` runs the trials
it has left, and takes up those it was running when it stopped.

Hydra's Optuna sweeper numbers a command's jobs from 0 and asks the study for as many trials as `n_trials` says:
a second command in the same dir would give new trials the dirs of finished ones, and run `n_trials` more. This
Hydra callback (hparams_search/optuna.yaml), when a sweep dir already holds the search, before the sweeper starts:

- enqueues the parameters of each job left unfinished (interrupted), so that the search's first trials run them
  again, in those jobs' own dirs, where they resume from their last.ckpt (lenet.runs.rundir); the trials that were
  running them are told failed;
- numbers the other new jobs after the sweep's last one, so that no finished job's dir is taken;
- asks for the trials left: `n_trials` less those that finished or failed in this sweep.

It needs the study to outlive the command: a search kept in memory cannot be continued, and says so.
"""

import sys
import warnings
from pathlib import Path

import optuna
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, read_write

from lenet.frame import keys
from lenet.runs import rundir
from lenet.runs.jobs import read_job


class ContinuedSearch(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = {int(path.name): read_job(path) for path in rundir.job_dirs(sweep_dir)}
        if not jobs:  # a new sweep dir (its multirun.yaml may be there already: lenet.runs.multirun writes it at start)
            return
        sweeper = config.hydra.sweeper
        if not sweeper.storage:
            print(f"error: hydra.sweep.dir={sweep_dir} holds an Optuna search that kept its study in memory: it "
                  "cannot be continued; start a new sweep dir (with hparams_search.storage=sqlite:///FILE.db a "
                  "search outlives its command)", file=sys.stderr)  # fmt: skip
            raise SystemExit(1)
        unfinished = sorted(n for n, job in jobs.items() if job.status == "unfinished")
        ended = len(jobs) - len(unfinished)
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        fixed = {keys.overridden(override) for override in config.hydra.overrides.task}  # the sweeper samples none
        searched = [name for name in sweeper.params if name not in fixed]
        for number in unfinished:
            params = {name: _value(jobs[number].params[name]) for name in searched}
            _fail_running(study, params)
            with warnings.catch_warnings():  # "experimental" since Optuna 1.2; the sweeper pins Optuna 2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(params)
        subdir = f"${{lenet_job_dir:${{hydra.job.num}},{unfinished},{max(jobs, default=-1) + 1}}}"
        with read_write(config.hydra):
            # An override, not a value: Hydra composes each job's config anew from the multirun's overrides.
            config.hydra.overrides.hydra.append(f"hydra.sweep.subdir='{subdir}'")
            sweeper.n_trials = max(0, int(sweeper.n_trials) - ended)


def _value(override: str):
    """An override's value as Optuna's distributions hold it: 0.01 a float, 64 an int, sgd a string."""
    return OmegaConf.create(f"value: {override}").value


def _fail_running(study, params: dict) -> None:
    """The trial left running with these parameters, when its command stopped, is told failed."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.params == params:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
