"""Many machines on one study: a real PostgreSQL server, three workers, one SIGKILLed mid-trial.

The module's fixture installs the Debian package when it is missing (`apt-get install -y postgresql`), starts
a private server as the `postgres` user (initdb refuses root) on a free port with its data and socket in a
temporary folder, creates a database and a password user, and stops the server at the end. It skips only when
the server cannot be installed or started here, and fails instead where REQUIRE_POSTGRES=1 (CI, see .ci/run).
"""
import os
import pwd
import secrets
import shutil
import signal
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


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install() -> Path | None:
    if _pg_bin() is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "postgresql"], ["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
            if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode == 0 and _pg_bin():
                break
    return _pg_bin()


def _skip(reason: str) -> None:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """postgresql://bench:<password>@127.0.0.1:<port>/sweeps on a private server, and the password."""
    bin_dir = _install()
    if bin_dir is None:
        _skip("PostgreSQL is not installed and apt-get install -y postgresql failed here")
    as_pg: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="bench-pg-"))  # not under pytest's 0700 tmp: the postgres user must enter it
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
        as_pg = ["runuser", "-u", "postgres", "--"]
    port, password = _free_port(), "pw" + secrets.token_hex(8)

    def run(*cmd: str) -> None:
        r = subprocess.run([*as_pg, *cmd], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout[-500:]} {r.stderr[-1000:]}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(home / "data"), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256")
        run(str(bin_dir / "pg_ctl"), "-D", str(home / "data"), "-l", str(home / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(home, ignore_errors=True)
        _skip(f"cannot start a PostgreSQL server here: {e}")
    try:
        psql = [str(bin_dir / "psql"), "-h", str(home), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        run(*psql, "-c", f"CREATE ROLE bench LOGIN PASSWORD '{password}'")
        run(*psql, "-c", "CREATE DATABASE sweeps OWNER bench")
        yield f"postgresql://bench:{password}@127.0.0.1:{port}/sweeps", password
    finally:
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(home / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _other_host_prefix() -> list[str]:
    """Run a worker under another hostname (a UTS namespace), so only the heartbeat can see it die."""
    probe = ["unshare", "-u", "sh", "-c", 'hostname "$0" && exec "$@"', "other-machine", "true"]
    try:
        ok = shutil.which("unshare") and subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return probe[:-1] if ok else []


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("servers")
def test_three_workers_one_killed_every_trial_once(postgres, tmp_path):
    url, password = postgres
    env = {**os.environ, "RESULTS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "SWEEP_HEARTBEAT_S": "1",
           "SWEEP_GRACE_S": "3", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    sweep = [sys.executable, "-m", "bench", "sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile",
             "test", "--methods", "random", "--trials", str(TRIALS), "--device", "cpu", "--storage", url,
             "--control", "none", "--match", "none"]
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    # worker 0 (to be killed) on "another machine"; worker 1 mirrors to W&B offline: its config is checked below
    cmds = [_other_host_prefix() + sweep + ["--wandb", "off"], sweep + ["--wandb", "offline"], sweep + ["--wandb", "off"]]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
             for c, log in zip(cmds, logs)]
    try:
        storage = optuna.storages.RDBStorage(url)
        victim = _running_trial_of(storage, procs[0], deadline=time.time() + 480)  # generous: a loaded 2-core machine
        procs[0].send_signal(signal.SIGKILL)
        for p in procs[1:]:
            assert p.wait(timeout=600) == 0, logs[procs.index(p)].read_text()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    study = optuna.load_study(study_name=CFG.study_name("random"), storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS
    killed = storage.get_trial(victim)
    assert killed.state == optuna.trial.TrialState.FAIL
    assert [t for t in complete if t.params == killed.params]  # the killed trial was run again, to the end
    trials = ResultsTable(tmp_path / CFG.experiment).read().query("row_type == 'trial'")
    assert len(trials) == TRIALS and trials["config_hash"].is_unique and (trials["status"] == "complete").all()
    assert set(trials["optuna_trial"]) == {t.number for t in complete}
    assert list((tmp_path / CFG.experiment).rglob("*.wandb"))  # W&B wrote its records (config inside)
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaks  # nowhere: results, logs, W&B run records


def _running_trial_of(storage: optuna.storages.RDBStorage, proc: subprocess.Popen, deadline: float) -> int:
    """The id of a trial that `proc` is running with its knob chosen (so it is training), once there is one."""
    while time.time() < deadline:
        assert proc.poll() is None, "the worker to kill ended before it started a trial"
        try:
            study_id = storage.get_study_id_from_name(CFG.study_name("random"))
        except KeyError:
            time.sleep(0.5)
            continue
        for t in storage.get_all_trials(study_id, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("pid") in _pids(proc) and t.params:
                return t._trial_id
        time.sleep(0.2)
    raise AssertionError("the worker to kill never started a trial")


def _pids(proc: subprocess.Popen) -> set[int]:
    """proc's pid and its children's (unshare's sh execs python, so the pid is the same; kept general)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
    return {proc.pid, *(int(x) for x in out.split())}
