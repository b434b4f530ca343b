"""What Slurm says about jobs and nodes, read with squeue, sacct and sinfo, and put in words.

Kept apart from the executor so that `emkit status` reads the same facts without submitit.
A request no node of the partition can meet is found before anything is submitted (sinfo),
and again from the reason Slurm gives a pending job (squeue's %r): a job pending for
``PartitionConfig`` never starts, and a run that waited for it would wait forever.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass

from emkit.errors import EmkitError

# Pending reasons that mean the job, as asked, never starts: the run ends, naming the keys to change.
NEVER_STARTS = {
    "PartitionConfig": "the request exceeds what the partition allows",
    "PartitionNodeLimit": "the request asks more nodes than the partition allows",
    "PartitionTimeLimit": "time_min is above the partition's time limit",
    "BadConstraints": "no node has the features or resources asked",
    "ReqNodeNotAvail": "the nodes the request needs are down, drained or reserved",
    "InvalidAccount": "the account is not valid here",
    "InvalidQOS": "the qos is not valid here",
}
REASON_WORDS = {
    "None": "waiting to be scheduled",
    "Resources": "waiting for free nodes",
    "Priority": "other jobs come first",
    "Dependency": "waiting for another job",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by a user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "QOSMaxJobsPerUserLimit": "your qos's limit on running jobs is reached",
    "AssocMaxJobsLimit": "your account's limit on running jobs is reached",
    "AssocGrpCpuLimit": "your account's CPU limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "Reservation": "waiting for a reservation",
    "Prolog": "its node is running the prolog",
    "launch failed requeued held": "its launch failed; held after a requeue",
    **NEVER_STARTS,
}


def reason_in_words(reason: str) -> str:
    reason = (reason or "").strip()
    base = reason.split(",")[0].strip()
    words = REASON_WORDS.get(base) or REASON_WORDS.get(re.sub(r"\(.*\)$", "", base).strip())
    if base == "None":  # Slurm's word for no reason yet: nothing to add to the words
        return words
    return f"{words} ({reason})" if words else reason


def never_starts(reason: str) -> bool:
    base = (reason or "").split(",")[0].strip()
    return base in NEVER_STARTS or re.sub(r"\(.*\)$", "", base).strip() in NEVER_STARTS


@dataclass
class QueuedJob:
    state: str  # Slurm's: PENDING, RUNNING, PREEMPTED, ...
    reason: str = ""


def squeue_jobs(user: str | None = None) -> dict[str, QueuedJob] | None:
    """job id -> state and reason of the jobs squeue lists (finished ones for MinJobAge); None if squeue failed."""
    command = ["squeue", "-h", "-t", "all", "-o", "%i|%T|%r"]
    if user != "":
        command += ["-u", user or getpass.getuser()]
    listed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        return None
    jobs = {}
    for line in listed.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        jobs[job_id] = QueuedJob(state.split()[0] if state else "", reason.strip())
    return jobs


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> state, from accounting where the cluster keeps it (many do not: then nothing)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    listed = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                            capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        return {}
    states = {}
    for line in listed.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = state.split()[0]
    return states


@dataclass
class NodeSize:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


def partition_nodes(partition: str) -> list[NodeSize] | None:
    """The nodes of ``partition`` (the default one if empty) as sinfo lists them; None if sinfo cannot say."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"]
    if partition:
        command += ["-p", partition]
    listed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        return None
    nodes = {}
    for line in listed.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        name, cpus, mem, gres, partitions = parts
        if not partition and not partitions.endswith("*"):  # sinfo marks the default partition with *
            continue
        try:
            nodes[name] = NodeSize(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), gpu_count(gres))
        except ValueError:
            continue
    return list(nodes.values())


def gpu_count(gres: str) -> int:
    """GPUs in sinfo's %G: "gpu:4", "gpu:a100:8(S:0-1)", "gpu:a100:4,shard:8" (0 for "(null)")."""
    total = 0
    for item in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", item).split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _gb_floor(mem_mb: int) -> float:
    """Memory in GB to one decimal, rounded down: a request of that many GB fits."""
    return int(mem_mb * 10 / 1024) / 10


def check_request_fits(slurm) -> None:
    """Refuse, before submitting, a job no node of the partition can hold (CPUs, memory, GPUs)."""
    nodes = partition_nodes(slurm.partition)
    if not nodes:  # sinfo unreadable, or a partition it does not list: sbatch says what is wrong
        return
    mem_mb = slurm.mem_gb * 1024
    if any(n.cpus >= slurm.cpus_per_job and n.mem_mb >= mem_mb and n.gpus >= slurm.gpus_per_job for n in nodes):
        return
    largest = NodeSize("", max(n.cpus for n in nodes), max(n.mem_mb for n in nodes), max(n.gpus for n in nodes))
    changes = []
    if slurm.cpus_per_job > largest.cpus:
        changes.append(f"cpus_per_job (at most {largest.cpus})")
    if mem_mb > largest.mem_mb:
        changes.append(f"mem_gb (at most {_gb_floor(largest.mem_mb):g})")
    if slurm.gpus_per_job > largest.gpus:
        changes.append(f"gpus_per_job (at most {largest.gpus})")
    if not changes:
        changes.append("cpus_per_job, mem_gb or gpus_per_job (no one node has all of them)")
    where = f"partition {slurm.partition}" if slurm.partition else "the default partition"
    raise EmkitError(
        f"No node of {where} can run a job asking {slurm.cpus_per_job} CPUs, {slurm.mem_gb:g} GB and "
        f"{slurm.gpus_per_job} GPUs (its largest: {largest.cpus} CPUs, {_gb_floor(largest.mem_mb):g} GB, "
        f"{largest.gpus} GPUs); lower [execution.slurm] {', '.join(changes)}, or set partition to one that can.")


# the [execution.slurm] keys that can clear a reason; a reason not listed: any of the request's keys
KEYS_FOR_REASON = {
    "PartitionTimeLimit": "time_min (or partition)",
    "InvalidAccount": "account",
    "InvalidQOS": "qos",
}


def never_starts_message(unit_key: str, job_id: str, reason: str, slurm) -> str:
    where = f"partition {slurm.partition}" if slurm.partition else "the default partition"
    base = re.sub(r"\(.*\)$", "", (reason or "").split(",")[0]).strip()
    keys = KEYS_FOR_REASON.get(base, "cpus_per_job, mem_gb, gpus_per_job, time_min, partition, account or qos")
    return (f"Slurm will never start job {job_id} of unit {unit_key}: {reason_in_words(reason)}; it asked "
            f"{slurm.cpus_per_job} CPUs, {slurm.mem_gb:g} GB, {slurm.gpus_per_job} GPUs and {slurm.time_min} "
            f"minutes of {where}: change [execution.slurm] {keys} (`sinfo` and `scontrol show partition` say "
            f"what it allows), then run the same command again. The job was cancelled.")
