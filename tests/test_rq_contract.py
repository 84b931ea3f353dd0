"""The gateway's threaded worker keeps RQ's own worker contract, at the production thread count (issue 20).

``workers.worker.GatewayWorker`` extends RQ's ``SimpleWorker`` through ``BaseWorker``'s public methods to run
many jobs at once on threads; these tests hold a real ``sms-gateway worker`` process (``WORKER_THREADS`` at
its default) to what any RQ worker does: successes counted, failures in the FailedJobRegistry with their
traceback, ``Retry`` through the ScheduledJobRegistry, job timeouts, warm and cold shutdown, ``rq suspend`` /
``rq resume``, and a killed worker's started jobs recovered by RQ's own registry cleanup. The jobs are plain
functions (``tests/rq_contract_jobs.py``), on the gateway's ``sms`` queue.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from rq import Retry, Worker
from rq.job import Job, JobStatus

from config import load_settings
from tests.conftest import stop_process, wait_for
from workers.worker import GatewayWorker

JOBS = "tests.rq_contract_jobs"
RQ_CLI = Path(sys.executable).with_name("rq")


def status(job: Job) -> str | None:
    return job.get_status(refresh=True)


def rq(redis_server, *args: str) -> None:
    subprocess.run([str(RQ_CLI), *args, "--url", redis_server.url], check=True, capture_output=True, timeout=60)


def test_the_suite_runs_the_production_thread_count(env):
    assert "WORKER_THREADS" not in env  # every test's workers run the default, as deployed
    assert load_settings(env, dotenv_path=None).worker_threads == 64


def test_successes_are_counted_and_failures_land_in_the_failed_registry_with_their_traceback(
        start_worker_processes, redis, queue):
    start_worker_processes(1)
    done = [queue.enqueue(f"{JOBS}.double", index) for index in range(10)]
    failed = queue.enqueue(f"{JOBS}.boom")

    wait_for(lambda: all(status(job) == JobStatus.FINISHED for job in done), message="the jobs to finish")
    assert [job.return_value() for job in done] == [2 * index for index in range(10)]
    wait_for(lambda: failed.id in queue.failed_job_registry.get_job_ids(), message="the failure to be recorded")
    failure = failed.latest_result()
    assert "Traceback" in failure.exc_string and "ValueError: boom: a job that fails" in failure.exc_string
    [worker] = Worker.all(queue=queue)
    wait_for(lambda: (worker.refresh(), worker.successful_job_count)[1] >= 10 and worker.failed_job_count >= 1,
             message="the worker's counts")


def test_a_failed_jobs_arguments_stay_out_of_the_workers_log(start_worker_processes, redis, queue):
    pool = start_worker_processes(1)
    failed = queue.enqueue(f"{JOBS}.boom_with", "my secret booking words", description="a job with words")
    wait_for(lambda: failed.id in queue.failed_job_registry.get_job_ids(), message="the failure to be recorded")
    wait_for(lambda: "exception raised while executing" in pool.output(), message="RQ's line for the failure")
    assert "my secret booking words" not in pool.output()


def test_a_retry_goes_through_the_scheduled_registry(start_worker_processes, redis, queue):
    start_worker_processes(1)
    job = queue.enqueue(f"{JOBS}.fail_first_run", retry=Retry(max=1, interval=2))

    wait_for(lambda: job.id in queue.scheduled_job_registry.get_job_ids(), message="the retry to be scheduled")
    wait_for(lambda: status(job) == JobStatus.FINISHED, message="the retry to run")
    assert job.return_value() == "run 2"


def test_a_job_past_its_timeout_fails_with_the_timeout(start_worker_processes, redis, queue):
    start_worker_processes(1)
    job = queue.enqueue(f"{JOBS}.sleep_for", 30, job_timeout=1)
    quick = queue.enqueue(f"{JOBS}.double", 4)  # another thread goes on meanwhile

    wait_for(lambda: job.id in queue.failed_job_registry.get_job_ids(), message="the timeout")
    assert "JobTimeoutException" in job.latest_result().exc_string
    assert status(quick) == JobStatus.FINISHED


def test_warm_shutdown_finishes_the_jobs_in_flight_and_cold_shutdown_stops_at_once(start_worker_processes, redis,
                                                                                   queue):
    pool = start_worker_processes(1)
    running = [queue.enqueue(f"{JOBS}.sleep_for", 2) for _ in range(3)]
    wait_for(lambda: all(status(job) == JobStatus.STARTED for job in running), message="three jobs at once")
    pool.processes[0].send_signal(signal.SIGTERM)  # warm: take no job, finish those in flight
    assert pool.processes[0].wait(30) == 0
    assert all(status(job) == JobStatus.FINISHED for job in running)

    pool.spawn()
    stuck = queue.enqueue(f"{JOBS}.sleep_for", 120)
    wait_for(lambda: status(stuck) == JobStatus.STARTED, message="a long job to start")
    process = pool.processes[-1]
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: "warm shut down requested" in pool.output(), message="the first signal")

    def stopped_cold() -> bool:  # RQ takes a repeat of the signal within a second of the first for the same one
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(0.5)
        except subprocess.TimeoutExpired:
            return False
        return True

    wait_for(stopped_cold, timeout=30, message="the second signal to stop the worker at once")
    assert "cold shut down" in pool.output().lower()
    assert status(stuck) != JobStatus.FINISHED


def test_rq_suspend_holds_the_jobs_and_rq_resume_lets_them_run(start_worker_processes, redis, redis_server, queue):
    start_worker_processes(1)
    rq(redis_server, "suspend")
    try:
        # As any RQ worker, it sees the suspension between two waits for a job: a job wakes it.
        queue.enqueue(f"{JOBS}.double", 4)
        [worker] = Worker.all(queue=queue)
        wait_for(lambda: (worker.refresh(), worker.get_state())[1] == "suspended", timeout=40,
                 message="the worker to suspend")
        job = queue.enqueue(f"{JOBS}.double", 5)
        assert (worker.refresh(), worker.get_state())[1] == "suspended"
        assert status(job) == JobStatus.QUEUED and queue.count == 1  # a suspended worker takes nothing
    finally:
        rq(redis_server, "resume")
    wait_for(lambda: status(job) == JobStatus.FINISHED, message="the job to run after rq resume")


def test_a_killed_workers_started_jobs_are_recovered_by_rqs_registry_cleanup(start_worker_processes, redis, queue):
    pool = start_worker_processes(1)
    job = queue.enqueue(f"{JOBS}.sleep_for", 3, retry=Retry(max=1))
    wait_for(lambda: redis.get(f"test:runs:{job.id}") == b"1", message="the job to be running")
    pool.crash(pool.processes[0])

    pool.spawn()  # its maintenance finds the dead execution without a heartbeat, and RQ retries the job
    wait_for(lambda: status(job) == JobStatus.FINISHED, timeout=90, message="the job recovered and run again")
    job.refresh()
    assert job.return_value() == 3 and job.retries_left == 0 and redis.get(f"test:runs:{job.id}") == b"2"
    assert queue.failed_job_registry.count == 0


def test_a_running_jobs_execution_is_kept_alive_so_rq_never_takes_it_for_abandoned(start_worker_processes, redis,
                                                                                     queue):
    """RQ's cleanup takes an execution whose heartbeat expired for a dead worker's and runs its job again. Jobs run on
    threads here, so one thread renews them all (ExecutionBeats): a turn longer than ABANDONED_AFTER_SECONDS is not
    run twice. Its expiry moves forward while it runs, and it is never past the cleanup's cutoff."""
    start_worker_processes(1)
    job = queue.enqueue(f"{JOBS}.sleep_for", 12)  # the first beat comes 5 s into it (JOB_MONITORING_INTERVAL_SECONDS)
    wait_for(lambda: redis.get(f"test:runs:{job.id}") == b"1", message="the job to be running")

    def expiry() -> float:
        [(_, score)] = redis.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
        return score

    first = expiry()
    wait_for(lambda: expiry() > first, timeout=10, message="a heartbeat to renew the running job's execution")
    assert queue.started_job_registry.get_expired_job_ids() == []
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, message="the job to finish, run once")
    assert redis.get(f"test:runs:{job.id}") == b"1"


def test_a_stopped_worker_leaves_no_job_behind(start_worker_processes, redis, queue):
    pool = start_worker_processes(1)
    job = queue.enqueue(f"{JOBS}.double", 1)
    wait_for(lambda: status(job) == JobStatus.FINISHED, message="the job")
    stop_process(pool.processes[0])
    assert queue.count == 0 and queue.started_job_registry.count == 0


def _unsubscribe_returns_promptly(worker, unsubscribe) -> bool:
    """Whether ``unsubscribe`` returns within 10 s when the listener has already seen the channel left (the
    interleaving that hung: the listener then waits for a subscription for its whole sleep_time)."""
    worker.subscribe()
    wait_for(lambda: worker.pubsub.subscribed, message="the listener to subscribe")
    worker.pubsub.unsubscribe()
    wait_for(lambda: not worker.pubsub.subscribed, message="the listener to read the unsubscribe reply")
    stopper = threading.Thread(target=unsubscribe, daemon=True)
    stopper.start()
    stopper.join(10)
    return not stopper.is_alive()


def test_leaving_rqs_command_channel_never_waits_for_the_listener(env, redis, queue):
    """RQ 3.0's unsubscribe, with redis-py 8, could wait up to a minute for its listener thread (once the channel
    is left, the listener waits for a subscription for its 60 s sleep_time, and PubSubWorkerThread.stop() waits for
    it): a stop of ``sms-gateway run`` hung until the launcher killed the worker, one run in three."""
    worker = GatewayWorker([queue.name], connection=redis,
                           concurrency=load_settings(env, dotenv_path=None).worker_threads)
    assert _unsubscribe_returns_promptly(worker, worker.unsubscribe)
