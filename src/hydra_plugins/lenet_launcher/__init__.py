"""lenet's Slurm launcher (`hydra/launcher=slurm`): hydra-submitit-launcher's, with what a sweep on a cluster needs.

- A continued sweep (`hydra.sweep.dir=<its dir>`) queues only the jobs that have not ended and are not still queued or
  running: a sweep of a hundred jobs with three left queues three, and a job still running since the sweep's first
  launcher died with its terminal is left alone, not duplicated. Which Slurm job runs each job of the sweep is kept in
  the sweep dir (lenet.runs.queue), squeue says whether it still runs.
- `hydra.launcher.wait=false` queues the jobs and returns: submit and leave. The last job to end writes the report.
- A job out of requeues at its time limit, and sbatch refusing the jobs, are one line that says which setting to
  change, not submitit's traceback.

Hydra imports every plugin module, this one included, whenever any lenet command starts: submitit is imported
inside `launch` and `__call__`, as the base class does.
"""

import contextlib
import io
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import MISSING, OmegaConf

from lenet.frame.errors import SweepError
from lenet.runs import holder, queue, rundir

log = logging.getLogger(__name__)
POLL_S = 10  # how often a waiting launcher asks squeue about jobs it left alone
RESULT_GRACE_S = 30  # a job out of the queue has written its result by then, if it has one
SHOWN = 8  # the jobs a sweep left to run names with their Slurm ids; lenet.report lists them all


@dataclass
class LenetSlurmConf(SlurmQueueConf):
    """submitit's settings and lenet's `wait` (its default and meaning: conf/hydra/launcher/slurm.yaml)."""

    _target_: str = "hydra_plugins.lenet_launcher.SlurmLauncher"
    wait: bool = MISSING


ConfigStore.instance().store(group="hydra/launcher", name="lenet_slurm", node=LenetSlurmConf, provider="lenet")

# What sbatch says when it refuses a job, and the settings (hydra.launcher.*) that ask for it.
REFUSALS = {
    "generic resource": "gpus_per_node",
    "partition": "partition",
    "node configuration is not available": ("cpus_per_task", "mem_gb", "tasks_per_node", "nodes", "gpus_per_node"),
    "memory specification": "mem_gb",
    "time limit": "timeout_min",
    "account": "account",
    "qos": "qos",
    "node count": "nodes",
}


# The settings sbatch --test-only is asked about, as sbatch's own flags (submitit writes the same ones).
FLAGS = {
    "partition": "--partition={}", "gpus_per_node": "--gpus-per-node={}", "cpus_per_task": "--cpus-per-task={}",
    "mem_gb": "--mem={}GB", "nodes": "--nodes={}", "tasks_per_node": "--ntasks-per-node={}", "timeout_min": "--time={}",
    "account": "--account={}", "qos": "--qos={}", "constraint": "--constraint={}",
}  # fmt: skip


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, wait: bool = True, **params) -> None:
        super().__init__(**params)  # submitit's own settings: `wait` is lenet's, which submitit would not take
        self.wait = wait

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Without accounting (no slurmdbd) submitit warns at every poll; squeue still tells it how jobs are.
        logging.getLogger("submitit").addFilter(lambda record: "Bypassing sacct error" not in record.getMessage())
        refuse_if_the_cluster_cannot_run(self.params)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        running = still_running(sweep_dir, numbers)
        waiting = [(number, overrides) for number, overrides in zip(numbers, job_overrides, strict=True)
                   if number not in running and not rundir.finished(sweep_dir / str(number))]  # fmt: skip
        queued = {}
        for start, batch in _runs_of_consecutive_numbers(waiting):
            queued |= dict(zip(range(start, start + len(batch)), self._submit(batch, start), strict=True))
        queue.record_submitted(sweep_dir, {number: job.job_id for number, job in queued.items()})
        if not self.wait:
            say_detached(sweep_dir, queued, running)
            return [_done() for _ in queued]
        returns = [self._result(number, job) for number, job in queued.items()]
        wait_for(running)
        return returns

    def _submit(self, batch: list[Sequence[str]], start: int) -> list:
        """Queue a batch of consecutive jobs as one array, as submitit's launcher does, without waiting for them."""
        import submitit
        from submitit.core.utils import FailedJobError

        settings = {
            key: value for key, value in self.params.items() if key not in ("submitit_folder", "max_num_timeout")
        }
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])  # fmt: skip
        base = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit takes the others as slurm_<name>
        executor.update_parameters(**{key if key in base else f"slurm_{key}": v for key, v in settings.items()})
        for number, overrides in enumerate(batch, start):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        jobs = [(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
                for number, overrides in enumerate(batch, start)]  # fmt: skip
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal: said below
                return executor.map_array(self, *zip(*jobs, strict=True))
        except FailedJobError as error:
            print(f"error: {advice(str(error), self.params)}", file=sys.stderr)
            raise SystemExit(1) from None  # as lenet's own refusals end: one line, no traceback from Hydra

    def _result(self, number: int, job) -> JobReturn:
        """The job's result; a job that ended without one (cancelled, out of requeues at its time limit) as one
        line."""
        from submitit.core.utils import UncompletedJobError

        if ended := _ended_without_result(job):
            return _failed(f"job {number} (Slurm job {job.job_id}) {ended}: see {job.paths.stderr}")
        try:
            return job.results()[0]
        except UncompletedJobError as error:
            return _failed(f"job {number} (Slurm job {job.job_id}) {_why_uncompleted(str(error), self.params)}")

    def __call__(self, *args, **kwargs) -> JobReturn:
        """A job, in its Slurm job: run, then, in a sweep left to run on its own, the report if this job ends it."""
        from submitit.core.utils import UncompletedJobError

        ended = super().__call__(*args, **kwargs)
        if ended.status == JobStatus.FAILED and isinstance(ended._return_value, UncompletedJobError):
            ended = _failed(f"job {args[2]} {_why_uncompleted(str(ended._return_value), self.params)}")
            log.error("%s", ended._return_value)  # into the job's log: it ends here, not by submitit's traceback
        if not self.wait:
            from lenet.runs.sweep_report import sweep_report

            sweep_dir = Path(self.config.hydra.sweep.dir)
            if all_ended(sweep_dir):
                sweep_report(sweep_dir)
        return ended


@dataclass(frozen=True)
class Running:
    """A job of the sweep still queued or running: its Slurm job, or (queued by another launcher) its run dir's
    holder."""

    slurm_job: str | None
    run_dir: Path
    what: str

    def still(self) -> bool:
        if self.slurm_job:
            return self.slurm_job in (queue.alive([self.slurm_job]) or set())
        return _live_holder(self.run_dir) is not None


def still_running(sweep_dir: Path, numbers: range) -> dict[int, Running]:
    """Which of the sweep's jobs `numbers` an earlier launch queued and Slurm still has queued or running, or whose run
    dir a live process holds. A continuation leaves them alone."""
    submitted = {number: job for number, job in queue.submitted(sweep_dir).items() if number in numbers}
    states = queue.states(list(submitted.values())) or {}
    running = {number: Running(job, sweep_dir / str(number), f"Slurm job {job}, {states[job].lower()}")
               for number, job in submitted.items() if states.get(job) in queue.ALIVE}  # fmt: skip
    for number in (n for n in numbers if n not in running):
        if held := _live_holder(sweep_dir / str(number)):
            running[number] = Running(None, sweep_dir / str(number), f"held by {held}")
    return running


def _live_holder(run_dir: Path) -> holder.Holder | None:
    """The process holding `run_dir`, unless it has ended (one that cannot be asked may still run)."""
    held = holder.read(run_dir)
    return held if held is not None and held.alive() is not False else None


def all_ended(sweep_dir: Path) -> bool:
    """Whether every job the sweep queued has ended: by its record (finished, failed), else by leaving Slurm's queue.
    Each job writes its record before it asks: of two jobs that end together, the later one to ask sees both."""
    submitted = queue.submitted(sweep_dir)
    unrecorded = [job for n, job in submitted.items() if not rundir.finished(sweep_dir / str(n))
                  and not rundir.failure(sweep_dir / str(n)) and job != queue.this_job()]  # fmt: skip
    return not unrecorded or queue.alive(unrecorded) == set()


def say_detached(sweep_dir: Path, queued: dict, running: dict[int, Running]) -> None:
    named = [f"job {number} as {job.job_id}" for number, job in queued.items()]
    shown = ", ".join(named[:SHOWN]) + (f", ... ({len(named)} in all)" if len(named) > SHOWN else "")
    left = f"; {len(running)} job(s) still queued or running from before, left alone" if running else ""
    print(f"Queued {shown or 'no job'} in Slurm{left}.")
    print(f"Progress: python -m lenet.report {sweep_dir}   (the last job to end writes the report there)")


def wait_for(running: dict[int, Running]) -> None:
    """Until the jobs left alone leave Slurm's queue, or the processes holding their dirs end."""
    for number, job in running.items():
        log.info("job %d is still running (%s): waited for, not queued again", number, job.what)
    while running:
        time.sleep(POLL_S)
        running = {number: job for number, job in running.items() if job.still()}


def _ended_without_result(job) -> str | None:
    """Wait until the job has its result, or Slurm no longer has it queued or running and no result came within
    RESULT_GRACE_S: then, how it ended. (Without Slurm's accounting submitit cannot tell a job that ended without a
    result, as a cancelled one does, from one still running, and would wait for ever.)"""
    gone_since = None
    while not job.paths.result_pickle.exists():
        alive = queue.alive([job.job_id])
        if alive is None or job.job_id in alive:
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since > RESULT_GRACE_S:
            state = (queue.states([job.job_id]) or {}).get(job.job_id, "no longer known to Slurm")
            return f"ended without a result ({state.lower()}); continue the sweep to run it again"
        time.sleep(1)
    return None


def _why_uncompleted(error: str, params: dict) -> str:
    if "timed-out" in error or "TIMEOUT" in error:
        limit, requeues = params.get("timeout_min"), params.get("max_num_timeout") or 0
        return (
            f"ran out of time {requeues + 1} time(s): raise hydra.launcher.timeout_min={limit} or "
            f"hydra.launcher.max_num_timeout={requeues}, then continue the sweep (it resumes from its last.ckpt)"
        )
    return f"ended without a result ({error.strip().splitlines()[-1] if error.strip() else 'no reason given'})"


def _done() -> JobReturn:
    done = JobReturn()
    done.status = JobStatus.COMPLETED
    done.return_value = None
    return done


def _failed(message: str) -> JobReturn:
    failed = JobReturn()
    failed.status = JobStatus.FAILED
    failed.return_value = SweepError(f"error: {message}")
    return failed


def _runs_of_consecutive_numbers(jobs: list[tuple[int, Sequence[str]]]):
    """(first number, their overrides) for each run of consecutive job numbers: submitit numbers a batch's jobs
    from its first."""
    run: list[tuple[int, Sequence[str]]] = []
    for job in jobs:
        if run and job[0] != run[-1][0] + 1:
            yield run[0][0], [overrides for _, overrides in run]
            run = []
        run.append(job)
    if run:
        yield run[0][0], [overrides for _, overrides in run]


def refuse_if_the_cluster_cannot_run(params: dict) -> None:
    """sbatch --test-only with the jobs' resources: a job asking for more than any node has would wait for ever
    ("PartitionConfig"), one asking for what no node has is refused: either is one line before anything queues."""
    flags = [flag.format(params[key]) for key, flag in FLAGS.items() if params.get(key) is not None]
    test = subprocess.run(["sbatch", "--test-only", *flags, "--wrap=true"], capture_output=True, text=True)
    if test.returncode:
        print(f"error: {advice(test.stderr, params)}", file=sys.stderr)
        raise SystemExit(1)


def beyond_every_node(params: dict) -> str:
    """Which of the CPUs and memory asked for per node no node has (sinfo), said with the largest node's."""
    nodes = [line.split() for line in _sinfo("%c %m").splitlines() if line.strip()]
    if not nodes:
        return ""
    cpus, memory_mb = max(int(n[0].rstrip("+")) for n in nodes), max(int(n[1].rstrip("+")) for n in nodes)
    wanted_cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    too_much = []
    if wanted_cpus > cpus:
        too_much.append(f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} (x tasks_per_node) asks for "
                        f"{wanted_cpus} CPUs")  # fmt: skip
    if (params.get("mem_gb") or 0) * 1024 > memory_mb:
        too_much.append(f"hydra.launcher.mem_gb={params['mem_gb']} asks for more memory")
    if not too_much:
        return ""
    return f"{' and '.join(too_much)}; the largest node has {cpus} CPUs and {memory_mb // 1024} GB"


def _sinfo(fields: str) -> str:
    done = subprocess.run(["sinfo", "-h", "-o", fields], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def advice(message: str, params: dict) -> str:
    """sbatch's reason, in one line, with the settings that asked for what the cluster refused."""
    reason = message.strip().splitlines()[-1].rsplit("error: ", 1)[-1].removeprefix("Batch job submission failed: ")
    reason = reason.removeprefix("allocation failure: ")
    keys = next((keys for words, keys in REFUSALS.items() if words in reason.lower()), ())
    keys = [keys] if isinstance(keys, str) else list(keys)
    asked = ", ".join(f"hydra.launcher.{key}={params.get(key)}" for key in keys if params.get(key) is not None)
    if "generic resource" in reason.lower():
        return (f"sbatch refused the jobs: {reason}: this cluster has no GPUs for {asked}; on CPU nodes pass "
                "hydra.launcher.gpus_per_node=0, or take hydra/launcher=slurm_cpu")  # fmt: skip
    if "node configuration" in reason.lower() and (beyond := beyond_every_node(params)):
        return f"sbatch refused the jobs: {reason}: {beyond}"
    if asked:
        return f"sbatch refused the jobs: {reason}: change {asked} (sinfo shows what the cluster has)"
    return f"sbatch refused the jobs: {reason}; the settings are hydra.launcher.* (conf/hydra/launcher/slurm.yaml)"
