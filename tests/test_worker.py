"""The worker process: it waits for Redis with one clear line, and its scheduler child dies with it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from redis import Redis
from rq import Worker
from rq.scheduler import RQScheduler

from sandbox.httpfake import Fault
from tests.conftest import ROOT, RedisServer, free_port, settings_env, stop_process, wait_for, wait_idle

PERSON = "+14155550199"


def scheduler_pid(redis) -> int | None:
    """The pid of the scheduler holding the lock of the ``sms`` queue (RQ's public scheduler records)."""
    name = redis.get(RQScheduler.get_locking_key("sms"))
    if name is None:
        return None
    try:
        return RQScheduler.fetch(name.decode(), connection=redis).pid or None
    except Exception:  # the lock was just taken: its holder has not written its record yet
        return None


def process_state(pid: int) -> str:
    """The process's state line and what it waits in (for a failure's message)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as exc:
        return f"unreadable ({exc})"
    return "; ".join([line for line in status if line.startswith(("State", "Threads", "SigPnd", "ShdPnd"))]
                     + [f"wchan {wchan}"])


def is_running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_workers_scheduler_exits_and_a_new_workers_scheduler_takes_over(start_worker_processes, redis, text_in,
                                                                                 uponai, twilio):
    pool = start_worker_processes(1)
    first = wait_for(lambda: scheduler_pid(redis), message="the first worker's scheduler")
    assert first != pool.processes[0].pid  # the scheduler runs in a child process (workers.scheduler)

    os.kill(pool.processes[0].pid, signal.SIGKILL)  # the worker only, not its process group
    pool.processes[0].wait(10)
    # (Seen once in a loaded full run to take longer than 15 s: the message now says what the child was doing.)
    try:
        wait_for(lambda: not is_running(first), timeout=30, message="the orphaned scheduler to exit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its state: {process_state(first)}") from None

    pool.spawn()
    second = wait_for(lambda: (pid := scheduler_pid(redis)) not in (None, first) and is_running(pid) and pid,
                      timeout=30, message="the new worker's scheduler to take the lock")
    assert second != first

    # A retry is a scheduled job: only a running scheduler puts it back on the queue.
    uponai.inject("complete", Fault(status=500))
    text_in("are you still there?", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the answer after a scheduled retry")
    assert twilio.sent_to(PERSON) == ["You said: are you still there?"]
    assert len(uponai.calls("complete")) == 2


def test_worker_started_while_redis_is_away_says_so_in_one_line_and_starts_when_it_answers(
        redis_server, uponai_server, twilio_server, tmp_path):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           **settings_env(redis_server, uponai_server, twilio_server, REDIS_URL=f"redis://127.0.0.1:{port}/0")}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, cwd=tmp_path,
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = RedisServer(tmp_path)
    server.port = port
    try:
        expected = f"Redis at 127.0.0.1:{port} not reachable: connection refused; retrying in"
        wait_for(lambda: log_path.read_text().count(expected) >= 2, timeout=30,
                 message="the worker to say twice that Redis is not reachable")
        assert worker.poll() is None, "the worker gave up instead of retrying"
        output = log_path.read_text()
        assert "Traceback" not in output
        assert len(output.splitlines()) == output.count(expected), output  # one line per attempt, nothing else

        server.start()
        with Redis(port=port) as direct:
            # Both of the process's RQ workers: the one on the sms queues and the one on the events queue.
            wait_for(lambda: sorted(tuple(w.queue_names()) for w in Worker.all(connection=direct)) == [
                ("sms-admin", "sms", "sms-campaigns"), ("sms-events",)], timeout=45, message="the worker to register")
        assert "Traceback" not in log_path.read_text()
    finally:
        stop_process(worker)
        server.stop()


def test_a_thread_worker_runs_jobs_and_leaves_the_process_signal_handlers_alone(redis, env):
    """ThreadWorker runs RQ's loop through public steps with no signal handlers: in a thread it runs, not raises."""
    from rq import Queue

    from config import load_settings
    from workers import jobs
    from workers.worker import THREAD_WORKER_TTL_SECONDS, ThreadWorker, work_until_stopped

    jobs.install_services(jobs.build_services(load_settings(env, dotenv_path=None), redis))
    queue = Queue("thread-worker-test", connection=redis)
    job = queue.enqueue("builtins.len", "four")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    rq_log_level = logging.getLogger("rq.worker").level  # RQ sets it when a worker starts: given back below
    stop = threading.Event()
    thread = threading.Thread(target=work_until_stopped, args=(ThreadWorker, redis, [queue.name], stop), kwargs={
        "with_scheduler": False, "burst": False, "max_jobs": None, "logging_level": "WARNING",
        "ttl": THREAD_WORKER_TTL_SECONDS}, daemon=True)
    try:
        thread.start()
        wait_for(lambda: job.get_status(refresh=True) == "finished", message="the thread worker to run the job")
        assert job.return_value() == 4
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
        stop.set()  # what the main thread's request_stop does: an idle thread worker leaves at its next heartbeat
        wait_for(lambda: not thread.is_alive(), message="the thread worker to stop")
    finally:
        stop.set()
        jobs.install_services(None)
        logging.getLogger("rq.worker").setLevel(rq_log_level)
        queue.delete(delete_jobs=True)


def test_a_retried_turn_logs_the_true_attempt_count_not_rqs_backstop(start_worker_processes, text_in, uponai,
                                                                      twilio):
    pool = start_worker_processes(1)
    uponai.inject("complete", Fault(status=500))
    text_in("try me twice", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the answer after one retry")
    pool.stop()

    output = "\n".join(path.read_text() for path in pool.logs)
    # settings_env has three retry intervals: four attempts in all, the first one failed.
    assert "attempt=1 of 4 transient failure" in output, output
    assert ": scheduled to run again at " in output, output
    assert "remaining" not in output, output  # RQ's count of its backstop (999 remaining) is gone


def test_one_worker_process_waits_on_as_many_agent_turns_at_once_as_it_has_threads(start_worker_processes, redis,
                                                                                     text_in, uponai, twilio):
    """WORKER_THREADS is how many turns one process waits on at once: each turn here waits for all the others."""
    threads = 64
    together = threading.Barrier(threads, timeout=60)  # broken unless all 64 turns reach the fake UponAI at once
    uponai.responder = lambda chat, text: (together.wait(), [f"re: {text}"])[1]
    start_worker_processes(1, WORKER_THREADS=str(threads), UPONAI_READ_TIMEOUT_SECONDS="90")
    people = [f"+1415555{index:04d}" for index in range(threads)]
    for person in people:
        text_in(f"hello from {person[-4:]}", from_=person)

    wait_for(lambda: all(twilio.sent_to(person) for person in people), timeout=90,
             message=f"{threads} turns answered together")
    wait_idle(redis)
    assert not together.broken
    assert [twilio.sent_to(person) for person in people] == [[f"re: hello from {person[-4:]}"] for person in people]
    assert len(uponai.calls("complete")) == threads


def test_a_job_past_its_timeout_is_stopped_in_its_own_thread_by_the_watchdog():
    """Job threads have no SIGALRM: the process's watchdog raises RQ's JobTimeoutException in the job's thread."""
    from rq.timeouts import JobTimeoutException

    from workers.job_timeouts import WatchdogDeathPenalty

    outcomes: dict[str, str] = {}

    def job(name: str, seconds: int) -> None:
        try:
            with WatchdogDeathPenalty(seconds, JobTimeoutException):
                while name not in outcomes:  # Python code running (an async exception lands between bytecodes)
                    pass
        except JobTimeoutException as exc:
            outcomes[name] = str(exc)

    threads = [threading.Thread(target=job, args=(name, 1), daemon=True) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == {"first": "Task exceeded maximum timeout value (1 seconds)",
                        "second": "Task exceeded maximum timeout value (1 seconds)"}


def test_sigterm_lets_every_turn_in_flight_finish_and_leaves_waiting_texts_to_the_next_worker(
        start_worker_processes, redis, text_in, uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(60), [f"re: {text}"])[1]
    pool = start_worker_processes(1, WORKER_THREADS="4", UPONAI_READ_TIMEOUT_SECONDS="90")
    busy = [f"+1415556{index:04d}" for index in range(4)]
    for person in busy:
        text_in("deploy now", from_=person)
    wait_for(lambda: len(uponai.calls("complete")) == 4, message="four turns in flight in one process")
    text_in("anyone there?", from_=PERSON)  # every job thread is busy: its job waits in the queue
    pool.processes[0].send_signal(signal.SIGTERM)
    wait_for(lambda: "warm shut down requested" in pool.output(), message="the worker to take the stop")
    release.set()

    assert pool.processes[0].wait(30) == 0
    assert [twilio.sent_to(person) for person in busy] == [["re: deploy now"]] * 4  # finished, not dropped
    assert twilio.sent_to(PERSON) == []  # not taken by a worker on its way out
    pool.spawn()
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the next worker to answer the waiting text")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["re: anyone there?"]
    assert [twilio.sent_to(person) for person in busy] == [["re: deploy now"]] * 4
    assert "Traceback" not in pool.output()


def test_a_stop_signal_landing_as_a_job_slot_is_taken_does_not_hold_up_the_warm_shutdown(redis):
    """A signal handler runs at whatever bytecode the main thread is at, and RQ's (and ours) raise StopRequested
    from it. Here it lands as take_slot leaves its lock, the slot counted but not yet the caller's to give back:
    the warm shutdown must still end at once (it waited for that slot, forever: Ctrl-C hung `sms-gateway run`)."""
    import time

    from rq.exceptions import StopRequested

    from workers.worker import GatewayWorker

    worker = GatewayWorker(["stop-while-taking-a-slot"], connection=redis, concurrency=2)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def signal_lands(frame, event, arg):  # a trace function runs where a signal handler would, raising into it
        if event == "call" and frame.f_code.co_name == "__exit__" and frame.f_back is not None \
                and frame.f_back.f_code.co_name == "take_slot":
            sys.settrace(None)
            worker.request_stop(signal.SIGTERM, None)
        return None

    forced = threading.Timer(10, lambda: setattr(worker, "forced", True))  # the second Ctrl-C, if it hangs
    try:
        worker.register_birth()
        sys.settrace(signal_lands)
        try:
            worker.dequeue_job_and_maintain_ttl(1)
        except StopRequested:
            pass
        finally:
            sys.settrace(None)
        assert worker.stopping, "the stop never landed: take_slot no longer leaves a lock in a with block?"
        forced.start()
        began = time.monotonic()
        worker.teardown()
        assert not worker.forced, f"the warm shutdown waited {time.monotonic() - began:.1f}s for a second signal"
        assert worker.name not in {w.name for w in Worker.all(connection=redis)}  # its death registered
    finally:
        forced.cancel()
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
