"""lenet's Slurm launcher (`hydra/launcher=slurm`): hydra-submitit-launcher's, with two things more.

- A continued sweep (`hydra.sweep.dir=<its dir>`) queues only the jobs that have not finished (lenet.runs.rundir): a
  sweep of a hundred jobs with three left queues three. (A finished job launched anyway would only keep its
  results, as it does under the other launchers; here it would also wait in the queue.)
- sbatch refusing the jobs is one line that says which setting to change, not submitit's traceback.

Hydra imports every plugin module, this one included, whenever any lenet command starts: submitit is imported
inside `launch`, as the base class does.
"""

import contextlib
import io
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from lenet.runs import rundir

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
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError

        # Without accounting (no slurmdbd) submitit warns at every poll; squeue still tells it how jobs are.
        logging.getLogger("submitit").addFilter(lambda record: "Bypassing sacct error" not in record.getMessage())
        refuse_if_the_cluster_cannot_run(self.params)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        waiting = [(index, overrides) for index, overrides in enumerate(job_overrides, initial_job_idx)
                   if not rundir.finished(sweep_dir / str(index))]  # fmt: skip
        returns = []
        for start, batch in _runs_of_consecutive_numbers(waiting):
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal: said below
                    returns += super().launch(batch, initial_job_idx=start)
            except FailedJobError as error:
                print(f"error: {advice(str(error), self.params)}", file=sys.stderr)
                raise SystemExit(1) from None  # as lenet's own refusals end: one line, no traceback from Hydra
        return returns


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
