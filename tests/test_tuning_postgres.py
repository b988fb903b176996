"""Many workers on one PostgreSQL study: a worker killed mid-trial has its trial failed and retried.

The server's URL comes from ``SB3_DQN_EXT_TEST_PG_URL``; without it, a throw-away server is started when PostgreSQL's
``initdb`` and ``pg_ctl`` are installed. With neither the tests are skipped, except in CI (``CI=true``), where they
fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from test_tuning import FAST_TRIALS

from tuning.storage import StorageError, open_storage

REPO = Path(__file__).resolve().parents[1]
URL_ENV_VAR = "SB3_DQN_EXT_TEST_PG_URL"

pytestmark = pytest.mark.postgres


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no PostgreSQL server: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}; set {URL_ENV_VAR} or install PostgreSQL (initdb, pg_ctl)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_throwaway_server() -> tuple[str, Callable[[], None]]:
    """Start a trust-authenticated server in a temporary folder; returns its URL and a function that stops it.

    :raises RuntimeError: naming why no server could be started
    """
    on_path = shutil.which("initdb")
    candidates = ([os.path.dirname(os.path.realpath(on_path))] if on_path else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), reverse=True
    )
    tools = ("initdb", "pg_ctl", "createdb")
    bindir = next((d for d in candidates if all(os.path.exists(f"{d}/{tool}") for tool in tools)), None)
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb, pg_ctl and createdb are not installed")
    # Not under pytest's tmp_path: the server's user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="sb3-dqn-ext-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run the server") from None
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", _free_port()

    def stop() -> None:
        subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    commands = [
        [f"{bindir}/initdb", "-D", str(data), "-U", "tuning", "--auth=trust"],
        [f"{bindir}/pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "start", "-o",
         f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"],
        [f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "tuning", "tuning"],
    ]  # fmt: skip
    for command in commands:
        result = subprocess.run(run_as + command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            stop()
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{os.path.basename(command[0])} failed: {last_line}")
    return f"postgresql://tuning@127.0.0.1:{port}/tuning", stop


@pytest.fixture(scope="module")
def pg_url():
    url, stop = os.environ.get(URL_ENV_VAR), None
    if not url:
        try:
            url, stop = _start_throwaway_server()
        except RuntimeError as error:
            _unavailable(f"{URL_ENV_VAR} is not set and no throw-away server could be started ({error})")
    try:
        open_storage(url)
    except StorageError as error:
        if stop is not None:
            stop()
        _unavailable(str(error))
    yield url
    if stop is not None:
        stop()


def start_worker(url: str, study_name: str, log: Path) -> subprocess.Popen:
    """One ``python -m tuning`` worker command, as on one machine of many."""
    command = [
        sys.executable, "-m", "tuning", "--algo", "sb3_dqn", "--env", "CartPole-v1", "--storage", url,
        "--study-name", study_name, "--out", str(log.parent / log.stem), "--n-trials", "4", "--n-timesteps", "3000",
        "--eval-freq", "1500", "--n-eval-episodes", "2", "--pruner", "none", "--heartbeat-interval", "1",
        "--grace-period", "2",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def running_trial_of(study: optuna.Study, pid: int) -> int | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker", "").endswith(f":{pid}"):
            return trial.number
    return None


def test_a_killed_workers_trial_is_failed_and_retried_and_no_completed_trial_is_lost(pg_url, tmp_path):
    study_name = f"test-kill-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=study_name, storage=open_storage(pg_url), direction="maximize")
    for params in FAST_TRIALS:  # as many as the workers are asked for; the retry comes after them
        study.enqueue_trial(params)
    victim = start_worker(pg_url, study_name, tmp_path / "victim.log")
    survivor = start_worker(pg_url, study_name, tmp_path / "survivor.log")
    try:
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.2)
            killed = running_trial_of(study, victim.pid)
        assert killed is not None, (tmp_path / "victim.log").read_text()[-3000:]
        time.sleep(1.0)  # well inside the trial, with heartbeats recorded
        victim.send_signal(signal.SIGKILL)
        assert survivor.wait(timeout=300) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    finally:
        for worker in (victim, survivor):
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        trials = optuna.load_study(study_name=study_name, storage=open_storage(pg_url)).trials
        optuna.delete_study(study_name=study_name, storage=open_storage(pg_url))

    states = {trial.number: trial.state for trial in trials}
    assert states[killed] == TrialState.FAIL
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed]
    assert [trial.state for trial in retries] == [TrialState.COMPLETE]
    assert retries[0].system_attrs["retry_history"] == [killed]
    assert retries[0].params == trials[killed].params
    assert [n for n, state in states.items() if state != TrialState.COMPLETE] == [killed]
    assert sum(state == TrialState.COMPLETE for state in states.values()) == 4
    log = (tmp_path / "survivor.log").read_text()
    assert f"(retry of trial {killed})" in log
    password = make_url(pg_url).password
    assert not password or password not in log + (tmp_path / "victim.log").read_text()
