"""The `local` executor: one unit after another, in this process, on this machine's first GPU (or
its CPU). Units write straight into the run's store; there is nothing to merge."""

from __future__ import annotations

from emkit.default_plugins.processes import jobs_by_pid
from emkit.hookspecs import hookimpl


class LocalExecutor:
    name = "local"
    in_process = True
    gpu_work_here = True  # a judge that uses the GPU would share it with the units
    slots = 1

    def describe(self) -> list[str]:
        return ["executor local: one unit after another in this process"]


class LocalBackend:
    name = "local"
    description = ("one unit after another in the emkit process, on this machine's CPU or first GPU; units that "
                   "fit on that GPU together run beside each other in worker processes")

    def create(self, settings, run_path):
        """In this process; on a GPU machine where several units fit on the GPU ([execution] units_per_gpu),
        in worker processes sharing its first GPU, as local-gpus runs them, so the GPU is not left idle."""
        from emkit.default_plugins.gpu_shares import gpu_memory
        from emkit.default_plugins.local_gpus_executor import LocalGpusExecutor, visible_gpus

        gpus = visible_gpus()[:1] if settings.units_per_gpu != 1 else []
        shared = gpus and (settings.units_per_gpu != "auto" or gpus[0] in gpu_memory())
        return LocalGpusExecutor(settings, run_path, name="local", gpus=gpus) if shared else LocalExecutor()

    def plan(self, settings, out_dir) -> dict:
        return {"how": "one unit after another in this process"}

    def jobs_now(self, rows: list[dict]) -> dict[str, str | None]:
        return jobs_by_pid(rows)

    def setup_lines(self, settings) -> list[str]:
        return []


@hookimpl
def register_executors(register):
    register(LocalBackend())
