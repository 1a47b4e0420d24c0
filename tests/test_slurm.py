"""A launched sweep on a real SLURM: three workers as a job array through submitit and sbatch, one `scancel`ed.

The module's fixture installs Debian's slurm-wlm and munge when they are missing (`apt-get install -y`), then
starts `munged` (its own key and socket), `slurmctld` and `slurmd` for one node on localhost with 3 CPUs, from a
slurm.conf in a temporary folder (SLURM_CONF; linuxproc process tracking, no task plugin, no cgroups, no
accounting), on free ports, as root (slurmd runs jobs as their user). It skips only when that cannot be done
here, and fails instead where REQUIRE_SLURM=1 (CI, see .ci/run). The daemons are stopped at the end.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from bench.trial.results import ResultsTable
from sweeps.config import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 3
CFG = SweepConfig("resnet20", "synthetic", profile="test", methods=("random",), control=False, match=None)
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
LAUNCH = [sys.executable, "-m", "bench", "launch", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test",
          "--methods", "random", "--trials", str(TRIALS), "--device", "cpu", "--control", "none", "--match", "none",
          "--wandb", "off", "--workers", "3", "--slurm", "time=10"]
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.is_file()), None)


def _install() -> bool:
    if not all(_which(d) for d in DAEMONS) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "slurm-wlm", "munge"]
        for cmd in (install, ["apt-get", "update"], install):
            if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode == 0 and all(map(_which, DAEMONS)):
                break
    return all(_which(d) for d in DAEMONS)


def _skip(reason: str) -> None:
    if os.environ.get("REQUIRE_SLURM") == "1":
        pytest.fail(f"REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _slurm_conf(home: Path, host: str) -> str:
    ctld, slurmd = _free_ports(2)
    return "\n".join([
        "ClusterName=benchtest", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd}", "AuthType=auth/munge", f"AuthInfo=socket={home}/munge.socket",
        "CredType=cred/munge", f"StateSaveLocation={home}/state", f"SlurmdSpoolDir={home}/spool",
        f"SlurmctldPidFile={home}/slurmctld.pid", f"SlurmdPidFile={home}/slurmd.pid",
        f"SlurmctldLogFile={home}/slurmctld.log", f"SlurmdLogFile={home}/slurmd.log",
        # no cgroups, no accounting: what a container or a CI machine allows
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides", "ReturnToService=2", "KillWait=5", "MinJobAge=600",
        # 3 CPUs declared on this 2-core machine (config_overrides): the three workers run at once, as on a cluster
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs=3 State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""])


def _start(home: Path, env: dict[str, str]) -> None:
    """munged, slurmctld, slurmd; raises RuntimeError with the logs when the node does not come up idle."""
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    daemons = [[_which("munged"), f"--socket={home}/munge.socket", f"--key-file={key}", f"--log-file={home}/munged.log",
                f"--pid-file={home}/munged.pid", f"--seed-file={home}/munged.seed", "--force"],
               [_which("slurmctld"), "-i"], [_which("slurmd"), "-N", socket.gethostname()]]
    for cmd in daemons:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-500:]} {_logs(home)}")
    deadline = time.time() + 60
    while time.time() < deadline:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
        if r.stdout.strip() == "idle":
            return
        time.sleep(1)
    raise RuntimeError(f"the node never came up idle (sinfo: {r.stdout.strip()!r} {r.stderr.strip()!r}) {_logs(home)}")


def _logs(home: Path) -> str:
    return " | ".join(f"{p.name}: {p.read_text()[-800:]}" for p in sorted(home.glob("*.log")))


def _stop(home: Path, env: dict[str, str]) -> None:
    ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True)
    for name in ("slurmd", "slurmctld", "munged"):  # the daemons this fixture started, by their pid files
        pid_file = home / f"{name}.pid"
        if pid_file.is_file() and pid_file.read_text().strip().isdigit():
            try:
                os.kill(int(pid_file.read_text()), 15)
            except ProcessLookupError:
                pass
    time.sleep(1)
    _kill_jobs(home)  # last: what the daemons left behind


def _kill_jobs(home: Path) -> None:
    """Kill what is left of this cluster's jobs: with linuxproc tracking and no cgroups, a job's processes can
    outlive the daemons and load the machine for the tests that follow. They are found by the SLURM_CONF of
    this fixture, which sbatch passed on to their environment."""
    mark = f"SLURM_CONF={home / 'slurm.conf'}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), 9)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def slurm():
    """The environment (SLURM_CONF) of a one-node SLURM cluster on localhost, 3 CPUs."""
    if os.geteuid() != 0:
        _skip("a local slurmd needs root here (it runs jobs as their submitting user)")
    if not _install():
        _skip("Slurm and munge are not installed and apt-get install -y slurm-wlm munge failed here")
    home = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    for sub in ("state", "spool"):
        (home / sub).mkdir()
    (home / "slurm.conf").write_text(_slurm_conf(home, socket.gethostname()))
    env = {**os.environ, "SLURM_CONF": str(home / "slurm.conf")}
    try:
        _start(home, env)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        _stop(home, env)
        shutil.rmtree(home, ignore_errors=True)
        _skip(f"cannot start munged/slurmctld/slurmd here: {e}")
    try:
        yield env
    finally:
        _stop(home, env)
        shutil.rmtree(home, ignore_errors=True)


def _status(env: dict[str, str], folder: Path, show: bool = True) -> str:
    r = subprocess.run([sys.executable, "-m", "bench", "status", str(folder)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if show:
        print(r.stdout)
    return r.stdout


def _status_showing(env: dict[str, str], folder: Path, deadline: float, *needles: str) -> str:
    """`bench status` once it shows every needle: the scheduler and the journal catch up at their own pace (a
    momentary empty squeue on a loaded machine must not end a wait early), so the test waits for the state."""
    seen = {"text": ""}

    def check() -> str | None:
        seen["text"] = _status(env, folder, show=False)
        return seen["text"] if all(n in seen["text"] for n in needles) else None

    try:
        text = _wait(f"bench status to show {needles}", check, deadline, folder)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast bench status:\n{seen['text']}") from None
    print(text)
    return text


def _queue(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T"], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _wait(what: str, check, deadline: float, folder: Path):
    while time.time() < deadline:
        if found := check():
            return found
        time.sleep(0.3)
    logs = "\n".join(f"{p}: {p.read_text()[-1500:]}" for p in sorted(folder.glob("slurm/*/*_log.*")))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def _running_trial(storage: optuna.storages.BaseStorage):
    """(trial id, its job) of a trial that a worker job is training (its knob chosen), once there is one."""
    try:
        study_id = storage.get_study_id_from_name(CFG.study_name("random"))
    except KeyError:
        return None
    return next(((t._trial_id, t.user_attrs["slurm_job"]) for t in storage.get_all_trials(
        study_id, states=(optuna.trial.TrialState.RUNNING,)) if t.params and "slurm_job" in t.user_attrs), None)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("servers")  # one worker runs the tests that start servers, one after the other
def test_three_slurm_workers_one_cancelled_every_trial_once(slurm, tmp_path):
    # each trial pauses 3 s in its fine-tuning, so the scancel lands inside one whatever the machine's speed (from
    # its knob to its end a trial is queued again if interrupted, sweeps.storage.requeue)
    env = {**slurm, "RESULTS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "SWEEP_HEARTBEAT_S": "1",
           "SWEEP_GRACE_S": "5", "OMP_NUM_THREADS": "1", "BENCH_PAUSE_AT": "finetune:3",
           "BENCH_LATENCY_ROUNDS": "3,5", "BENCH_SWEEP_REPORT": "1"}  # the finish job writes the report
    env.pop("BENCH_STORAGE", None)
    folder = tmp_path / CFG.experiment
    t0 = time.time()
    r = subprocess.run(LAUNCH, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    print(" ".join(LAUNCH[1:]), "\n" + r.stdout)
    jobs = json.loads((folder / "launch.json").read_text())["jobs"]
    assert f"submitted: prepare {jobs['prepare']}" in r.stdout

    # moment 1, just submitted: the first job trains the baseline, the array and the finish job wait on it
    first = _status(env, folder)
    assert f"random   0 complete, 0 running, 0 failed, 0 waiting (of {TRIALS} wanted)" in first
    assert f"{jobs['finish']} bench-finish PENDING" in first and f"{jobs['workers']}_2 bench-worker PENDING" in first

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    deadline = t0 + 400  # generous: a loaded 2-core machine
    victim, job = _wait("a worker training a trial", lambda: (folder / "optuna.journal").is_file()
                        and _running_trial(storage), deadline, folder)
    print("squeue before the scancel:\n" + subprocess.run(["squeue", "-r"], env=env, capture_output=True, text=True).stdout)
    subprocess.run(["scancel", job], env=env, check=True, timeout=30)

    # moment 2, the cancelled worker gone: its trial failed and enqueued again at once (no heartbeat wait)
    second = _status_showing(env, folder, deadline, f"{job} bench-worker CANCELLED", " 1 failed, ")
    assert f"{job} bench-worker CANCELLED" in second and " 1 failed, " in second

    third = _status_showing(env, folder, deadline, f"{jobs['finish']} bench-finish COMPLETED")
    _wait("every job to end", lambda: not set(_queue(env).values()) & set(ACTIVE), deadline, folder)
    assert f"random   {TRIALS} complete, 0 running, 1 failed, 0 waiting" in third
    assert f"{jobs['prepare']} bench-prepare COMPLETED" in third and f"{jobs['finish']} bench-finish COMPLETED" in third
    assert "remaining: nothing, the report is written" in third and (folder / "README.md").is_file()

    study = optuna.load_study(study_name=CFG.study_name("random"), storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    killed = storage.get_trial(victim)
    assert len(complete) == TRIALS and killed.state == optuna.trial.TrialState.FAIL
    redone = [t for t in complete if t.user_attrs.get("retry_of") == killed.number]
    assert len(redone) == 1 and redone[0].params == killed.params  # taken up once, by a live worker
    trials = ResultsTable(folder).read().query("row_type == 'trial'")
    assert len(trials) == TRIALS and trials["config_hash"].is_unique and (trials["status"] == "complete").all()
    assert set(trials["optuna_trial"]) == {t.number for t in complete}
    print(f"exactly once: {len(trials)} result rows, {len(complete)} complete trials, trial {killed.number} "
          f"cancelled and redone as trial {redone[0].number}; wall {time.time() - t0:.0f} s")


# ---------------------------------------------------------------- the launcher's checks, no cluster needed

@pytest.mark.slow
def test_a_time_limit_shorter_than_one_trial_is_refused_before_anything_is_submitted(tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SLURM_CONF": str(tmp_path / "no-cluster.conf")}  # sbatch would fail: the refusal must come first
    # 100 seeds per trial: one trial outlasts a minute on any machine the suite runs on
    cmd = [*LAUNCH[:LAUNCH.index("--slurm")], "--seeds", "100", "--slurm", "partition=debug time=1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: SLURM time=1 is shorter than one random trial, estimated at ") and "give time=" in line
    assert int(line.rsplit("give time=", 1)[1].split()[0]) > 1
    assert not list(tmp_path.rglob("launch.json")) and not list(tmp_path.rglob("*.pkl"))


@pytest.mark.parametrize("text, fragment", [("partition=gpu", "needs time=MINUTES"), ("time=4h", "needs time=MINUTES"),
                                            ("gpus_per_node", "is not KEY=VALUE")])
def test_bad_slurm_options_are_one_line_errors(text, fragment):
    from bench.core.errors import UserError
    from sweeps.launch import parse_slurm

    with pytest.raises(UserError, match=fragment):
        parse_slurm(text)
    assert parse_slurm("partition=gpu gpus_per_node=1 time=240 account=lab") == {
        "slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 240, "slurm_account": "lab"}


def test_a_storage_url_reaches_the_jobs_through_the_environment_only(monkeypatch):
    import pickle

    from sweeps.launch import _job_config

    for name in ("BENCH_STORAGE", "DATA_DIR"):  # recorded, so that what _job_config sets is undone after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    cfg = SweepConfig("resnet20", "synthetic", profile="test", storage="postgresql://bench:s3cret@db/sweeps", workers=4)
    job, shown = _job_config(cfg)
    assert os.environ["BENCH_STORAGE"] == cfg.storage and shown is None
    assert job.storage is None and job.workers == 1 and job.wandb == "offline"  # W&B offline on the nodes
    assert b"s3cret" not in pickle.dumps(job)
    journal, shown = _job_config(SweepConfig("resnet20", "synthetic", profile="test", wandb="off"))
    assert shown == journal.storage == f"journal:{journal.folder.absolute() / 'optuna.journal'}" and journal.wandb == "off"


def test_a_silent_trial_in_a_journal_goes_stale_and_runs_again_once(tmp_path, monkeypatch):
    from sweeps.storage import fail_stale, open_storage

    monkeypatch.setenv("SWEEP_HEARTBEAT_S", "1")
    monkeypatch.setenv("SWEEP_GRACE_S", "2")
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'optuna.journal'}"), study_name="s")
    beating = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # the silent one
    for _ in range(3):  # the first trial's worker lives and beats; the second's died before its first beat
        study._storage.record_heartbeat(beating._trial_id)
        time.sleep(1)
    fail_stale(study)
    fail_stale(study)  # a second worker checking as well: still one retry
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params


def test_an_interrupted_trial_is_queued_again_before_it_fails_and_run_once(tmp_path):
    """A scancelled worker queues its trial again while the trial still runs (sweeps.storage.requeue), so no other
    worker ever sees it neither running nor queued (one that did would start a fresh trial in its place, and the
    retry would then be pruned as surplus); the retry is not pruned as the original's twin, nor claimed by it."""
    from sweeps.objective import _claimed_before, _same_knob
    from sweeps.storage import _retry, hand_back, mark_owner, open_storage, requeue

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'optuna.journal'}"), study_name="s")
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.tell(study.ask(x), 1.0)
    victim = study.ask(x)
    mark_owner(victim)  # running in this live process: active
    requeue(study, victim._trial_id)
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.user_attrs == {"retry_of": victim.number}
    assert retry.params == victim.params
    assert _claimed_before(study, retry.number, victim.number) == 1 and _claimed_before(study, retry.number) == 2
    taken = study.ask()  # the next worker's trial takes the queued parameters
    assert taken.number == retry.number and taken.params == victim.params
    knobs = {"x": float(f"{victim.params['x']:.3g}")}
    assert _same_knob(taken, knobs, victim.number) is None and _same_knob(taken, knobs) == victim.number
    study.tell(victim, state=optuna.trial.TrialState.FAIL)  # then Optuna records the interrupted trial failed
    assert hand_back(study) == []  # the worker's own hand-back finds it queued already
    _retry(study, study.trials[victim.number])  # as a dead worker's recovery or the heartbeat would: once only
    assert [t.user_attrs.get("retry_of") for t in study.trials].count(victim.number) == 1


def test_bench_status_counts_each_methods_study_by_its_real_name(tmp_path):
    """`bench status` finds each method's study under the name the sweep gives it (method and engine versions
    appended), hyphenated method names included, and counts its trials by state."""
    from sweeps.status import method_of, status_text
    from sweeps.storage import open_storage

    cfg = SweepConfig("resnet20", "synthetic", profile="test", methods=("random", "decore"))
    for method in cfg.methods:
        assert method_of(cfg.study_name(method), cfg.experiment) == method
    assert method_of(f"{cfg.experiment}-scratch-b-0123abcd-4567", cfg.experiment) == "scratch-b"
    folder = tmp_path / cfg.experiment
    folder.mkdir()
    storage = open_storage(f"journal:{folder / 'optuna.journal'}")
    study = optuna.create_study(storage=storage, study_name=cfg.study_name("random"), directions=["maximize", "minimize"])
    x = optuna.distributions.FloatDistribution(0, 1)
    study.tell(study.ask({"x": x}), [1.0, 2.0])
    study.tell(study.ask({"x": x}), state=optuna.trial.TrialState.FAIL)
    study.ask({"x": x})
    (folder / "launch.json").write_text(json.dumps({"methods": ["random"], "trials": 3, "storage": f"journal:{folder / 'optuna.journal'}"}))
    text = status_text(folder)
    assert "random   1 complete, 1 running, 1 failed, 0 waiting (of 3 wanted)" in text, text

    # the command line's `status` loads neither torch nor the methods (a cluster user polls it), says the same
    probe = ("import sys; from bench.cli import main; main(['status', sys.argv[1]]); "
             "print('loaded:', sorted(m for m in ('torch', 'methods', 'timm', 'sweeps.config') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert text in r.stdout and "loaded: []" in r.stdout, r.stdout


def test_status_has_the_same_help_alone_as_in_the_full_parser(capsys):
    from bench import cli

    helps = []
    for parser in (cli.build_parser(), cli._status_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["status", "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1] and "experiment folders" in helps[0]
