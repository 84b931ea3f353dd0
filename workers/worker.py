"""The gateway's RQ worker: RQ's in-process worker plus crash recovery in its maintenance."""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError
from rq.worker import SimpleWorker

from workers import jobs

log = logging.getLogger(__name__)

# RQ's defaults (maintenance every 600 s, worker TTL 420 s) leave a killed worker's messages waiting
# for ten minutes; these bring recovery well under a minute and a half.
MAINTENANCE_INTERVAL_SECONDS = 15
WORKER_TTL_SECONDS = 35
JOB_MONITORING_INTERVAL_SECONDS = 5


class GatewayWorker(SimpleWorker):
    """Runs jobs in its own process (no fork per job) and re-queues conversations left behind by crashes."""

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        try:
            services = jobs.current_services()
            # One sweep at a time across all workers: the others' would find the same conversations.
            if not services.store.redis.set(services.store.key("sweep-lock"), self.name, nx=True,
                                            ex=MAINTENANCE_INTERVAL_SECONDS - 1):
                return
            recovered = jobs.recover_stalled(services)
        except RedisError as exc:
            log.warning("recovery sweep skipped: %s", type(exc).__name__)
            return
        if recovered:
            log.warning("recovery: queued %d conversation(s) left without a worker", recovered)


def run(connection, queue_names: list[str], *, burst: bool = False, max_jobs: int | None = None,
        logging_level: str = "INFO") -> None:
    """Work until stopped (SIGTERM/SIGINT finish the current job first), starting again after a Redis outage."""
    while True:
        worker = GatewayWorker(queue_names, connection=connection, log_job_description=False,
                               maintenance_interval=MAINTENANCE_INTERVAL_SECONDS, worker_ttl=WORKER_TTL_SECONDS,
                               job_monitoring_interval=JOB_MONITORING_INTERVAL_SECONDS)
        try:
            worker.work(with_scheduler=True, burst=burst, max_jobs=max_jobs, logging_level=logging_level)
        except RedisError as exc:
            log.error("worker stopped by a Redis error (%s); starting again", type(exc).__name__)
        if burst or max_jobs is not None or worker._shutdown_requested_date is not None:
            return
        log.warning("worker loop ended without a stop request; reconnecting in 1s")
        time.sleep(1)  # back off while Redis comes back
