"""A sweep past one machine, on the engines clusters already run: each planned run is a Ray task or a Slurm
job (through submitit). The engine schedules, retries and requeues; fixedhead says what one run is
(sweep.train_one, which resumes from the run's own checkpoint) and reports what came back.

- Ray (`--on ray`): a local Ray cluster, or the one at `--address` / RAY_ADDRESS. Each run is a task with
  `cpus_per_run` CPUs (torch gets as many threads) and `gpus_per_run` GPUs; a free worker takes the next
  run; a task whose worker died is retried up to `retries` times (it resumes from its checkpoint), then
  recorded as failed. Ctrl-C cancels every task; each run stays resumable.
- Slurm (`--on slurm`): one job array through submitit, at most `parallel` jobs at a time; a preempted or
  timed-out job is requeued through submitit's checkpoint hook and resumes from its checkpoint. With
  `wait` false the job ids are returned at once. `cluster="local"` runs the same jobs as local processes
  (submitit's local executor: how the tests run it, with no Slurm here).

Both need the run folders on storage every worker can write (a shared file system): a worker that cannot
write there fails its run with that line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UserError, reason
from ..runs import RunDir, SweepDir
from .experiment_file import load_experiment
from .sweep import expand, start, train_one

ENGINES = ("local", "ray", "slurm")


def train_planned_run(path: str, out: str, name: str, seeds=None, sets: dict | None = None, threads: int = 0) -> str:
    """One run of the experiment at `path`, by name, into `out`; its sweep status. What a worker executes."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    experiment = load_experiment(path, seeds, sets)
    run = next((r for r in expand(experiment) if r.name == name), None)
    if run is None:
        raise UserError(f"{path} plans no run named {name}; was the file edited after the sweep was submitted?")
    from ..config import make_config

    config = make_config(experiment["base"], run.overrides)
    run_dir = SweepDir(out).run(name)
    try:
        run_dir.path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"this worker cannot write {run_dir.path} ({error.strerror}): the sweep's --out must be on "
                        "storage every worker can write") from None
    return train_one(run, config, run_dir, experiment, f"[{name}]", lambda m: print(m, file=sys.stderr, flush=True))


def estimate_plan(path, seeds=None, sets: dict | None = None, tflops: float | None = None):
    """The GPU-hours estimate of every run the experiment plans (experiments.cost)."""
    from ..config import make_config
    from .cost import DEFAULT_TFLOPS, estimate

    experiment = load_experiment(path, seeds, sets)
    return estimate([(run.name, make_config(experiment["base"], run.overrides)) for run in expand(experiment)],
                    DEFAULT_TFLOPS if tflops is None else tflops)


def _todo(path, out, seeds, sets, log) -> tuple[list[str], dict]:
    """The planned runs not yet finished, after every check the local sweep makes (data, kept runs)."""
    experiment = load_experiment(path, seeds, sets)
    planned = expand(experiment)
    _, sweep_dir = start(path, out, experiment, planned, log, here=False)
    summary = {"planned": [r.name for r in planned], "finished": [], "skipped": [], "failed": [], "busy": []}
    todo: list[str] = []
    for run in planned:
        (summary["skipped"] if sweep_dir.run(run.name).is_finished() else todo).append(run.name)
    return todo, summary


def run_on_ray(path, out, seeds=None, sets: dict | None = None, address: str | None = None, cpus_per_run: int = 1,
               gpus_per_run: float = 0, retries: int = 2, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """The sweep's unfinished runs as Ray tasks (see the module's docstring); the merged summary."""
    try:
        import ray
    except ImportError:
        raise UserError("sweep --on ray needs Ray: pip install 'fixedhead[ray]'") from None
    todo, summary = _todo(path, out, seeds, sets, log)
    if not todo:
        return summary
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries)(train_planned_run)
    where = str(Path(path).resolve()) if Path(path).exists() else str(path)  # a shipped name stays a name
    pending = {task.remote(where, str(Path(out).resolve()), name,
                           seeds, sets, cpus_per_run): name for name in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                summary[ray.get(done[0])].append(name)
            except Exception as error:  # a task that failed past its retries (a worker died each time)
                RunDir(Path(out) / name).write_failure({"error": reason(error, 500), "traceback": ""})
                summary["failed"].append(name)
            log(f"ray: {sum(len(summary[k]) for k in ('finished', 'skipped'))} finished, {len(pending)} running or "
                f"queued, {len(summary['failed'])} failed")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()
    return summary


def run_on_slurm(path, out, seeds=None, sets: dict | None = None, partition: str | None = None, time_min: int = 60,
                 gpus_per_run: int = 0, cpus_per_run: int = 1, parallel: int = 8, wait: bool = True,
                 cluster: str = "slurm", log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """The sweep's unfinished runs as one Slurm job array through submitit (see the module's docstring);
    the merged summary, with "jobs": the job ids."""
    try:
        import submitit
    except ImportError:
        raise UserError("sweep --on slurm needs submitit: pip install 'fixedhead[slurm]'") from None
    todo, summary = _todo(path, out, seeds, sets, log)
    if not todo:
        return {**summary, "jobs": []}
    executor = submitit.AutoExecutor(folder=Path(out) / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_run, cpus_per_task=cpus_per_run,
                               slurm_array_parallelism=parallel, name=Path(out).name,
                               **({"slurm_partition": partition} if partition else {}))
    where = str(Path(path).resolve()) if Path(path).exists() else str(path)
    job = SlurmRun(where, str(Path(out).resolve()), seeds, sets, cpus_per_run)
    jobs = executor.map_array(job, todo)
    log(f"submitted {len(jobs)} run(s): job ids {', '.join(j.job_id for j in jobs)}")
    summary["jobs"] = [j.job_id for j in jobs]
    if not wait:
        return summary
    for name, done in zip(todo, jobs):
        while not done.done():
            time.sleep(1)
        try:
            summary[done.result()].append(name)
        except Exception as error:  # the job failed past submitit's requeues
            RunDir(Path(out) / name).write_failure({"error": reason(error, 500), "traceback": ""})
            summary["failed"].append(name)
    return summary


class SlurmRun:
    """The callable each Slurm job runs; requeued on preemption or time-out by submitit's checkpoint hook,
    and the requeued job resumes the run from its own checkpoint."""

    def __init__(self, path: str, out: str, seeds, sets, threads: int):
        self.path, self.out, self.seeds, self.sets, self.threads = path, out, seeds, sets, threads

    def __call__(self, name: str) -> str:
        return train_planned_run(self.path, self.out, name, self.seeds, self.sets, self.threads)

    def __submitit_checkpoint__(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
