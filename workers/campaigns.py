"""Campaign batch jobs: text each queued recipient of one batch once, at the sender's pace.

A campaign's numbers are cut into batches of CAMPAIGN_BATCH_SIZE; CAMPAIGN_PARALLEL_BATCHES of them run at once,
each batch job queueing the batch that many places further on when it is done (``CampaignStore.chain_once``: once,
whatever the retries). Jobs run on the ``sms-campaigns`` queue, which workers take last, so replies to people
talking to the agent never wait behind a campaign, and a campaign holds at most CAMPAIGN_PARALLEL_BATCHES threads.

Each recipient's first SMS is an outbound start, exactly as ``POST /admin/sms`` makes it
(``workers.admin_ops.start_outbound``: the number's chat ended, a new one created, the opening sent or written by
the agent) under an operation id of its own, ``campaign-{id}-{position}``. That operation is what makes the send
exactly once: its opening is claimed before it is sent and settled with the Twilio sid in the same Redis step that
records the SMS, and a run again after a crash looks it up at Twilio before sending (``workers.delivery``). The
campaign's count moves after, once (``CampaignStore.settle``).

Pacing: a slot of the sender's rate (``core.state.pacing``) is reserved before each send. A slot within
PACE_HORIZON_SECONDS is waited for; a later one is not: the job queues its own continuation at that time through
RQ's scheduler and ends, so no thread sleeps long on a campaign.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rq import Queue

from core.model import conversation_id
from core.queues import CAMPAIGN_QUEUE_NAME, campaign_batch_job, queue_campaign_batch
from core.redaction import mask_number
from core.state.campaigns import ERASED, CampaignStore, operation_id
from core.state.pacing import Pacing
from workers import admin_ops, sms_text
from workers.errors import CredentialsError, TwilioPermanentError, UponAIPermanentError
from workers.services import Services

log = logging.getLogger(__name__)

PACE_HORIZON_SECONDS = 1.0  # the longest a batch job waits for a slot of the rate; beyond, it is rescheduled
# Slots the batch jobs missed this recently (a worker stalled) are made up: Twilio queues so short a burst.
PACE_CATCH_UP_SECONDS = 0.5
# Refusals of one recipient that are final for it (the operator sees them as ``failed`` or ``skipped``).
SKIPPED_CODES = {"opted_out": "skipped:opted_out"}


def message_cost(message: str | None) -> int:
    """Slots of the rate one opening takes: its segments (Twilio's rate counts segments); 1 when the agent writes it."""
    return sms_text.segment_info(message).segments if message else 1


class BatchRun:
    """One run of a campaign batch job: its collaborators and where to queue what comes next."""

    def __init__(self, services: Services, queue: Queue, campaign_id: str, batch: int, run: int):
        self.services = services
        self.settings = services.settings
        self.queue = queue
        self.store = services.store
        self.campaigns = CampaignStore.from_settings(services.store.redis, services.settings)
        self.pacing = Pacing.from_settings(services.store.redis, services.settings)
        self.campaign_id, self.batch, self.run = campaign_id, batch, run

    def go(self) -> str:
        """Text the batch's queued recipients; returns what became of the run (for the job's result and the log)."""
        campaign = self.campaigns.campaign(self.campaign_id)
        if not campaign:
            return "gone"  # expired, or erased
        early = float(campaign.get("send_at") or 0) - time.time()
        if early > PACE_HORIZON_SECONDS:
            self._continue_in(early)
            return "rescheduled"
        if early > 0:  # RQ's scheduler counts whole seconds: a job can come up to a second early
            time.sleep(early)
        status = self.campaigns.start_sending(self.campaign_id)
        if status != "sending":
            return status or "gone"
        size = int(campaign["batch_size"])
        start = self.batch * size
        numbers = self.campaigns.numbers(self.campaign_id, start, start + size - 1)
        outcomes = self.campaigns.outcomes(self.campaign_id, numbers)
        cost = message_cost(campaign.get("message") or None)
        for offset, (number, outcome) in enumerate(zip(numbers, outcomes, strict=True)):
            if outcome is not None or number.startswith(ERASED):
                continue  # settled by an earlier run (or erased)
            if self.campaigns.status(self.campaign_id) != "sending":  # cancelled meanwhile: nothing more goes
                return "cancelled"
            slot = self.pacing.reserve(campaign["gateway"], self.settings.campaign_send_rate,
                                       horizon_seconds=PACE_HORIZON_SECONDS, cost=cost,
                                       catch_up_seconds=PACE_CATCH_UP_SECONDS)
            if not slot.reserved:
                self._continue_in(slot.wait_seconds)
                return "rescheduled"
            if slot.wait_seconds > 0:
                time.sleep(slot.wait_seconds)  # at most PACE_HORIZON_SECONDS
            self.text(campaign, start + offset, number)
        self._chain()
        return "done"

    def text(self, campaign: dict[str, str], position: int, number: str) -> None:
        """Start the recipient's conversation (the path of ``POST /admin/sms``) once, and count the outcome."""
        op_id = operation_id(self.campaign_id, position)
        gateway = campaign["gateway"]
        cid = conversation_id(gateway, number)
        begun = bool(self.store.operation(op_id)) or bool(self.store.progress(op_id).parts)
        if not begun:  # what was true when the campaign was accepted may have changed since
            if self.store.is_opted_out(cid):
                self._settle(number, "skipped:opted_out", op_id)
                return
            if campaign.get("include_in_conversation") != "1" and self.store.live_among(
                    [cid], self.settings.chat_idle_timeout_seconds):
                self._settle(number, "skipped:in_conversation", op_id)
                return
        request = {"to": number, "gateway": gateway,
                   "messaging_service_sid": campaign.get("messaging_service_sid") or None,
                   "message": campaign.get("message") or None, "agent_id": campaign.get("agent_id") or None,
                   "dynamic_variables": self.campaigns.variables(self.campaign_id, number),
                   "metadata": {"campaign_id": self.campaign_id}}
        try:
            admin_ops.start_outbound(self.services, op_id, request, still_wanted=lambda: self.campaigns.is_listed(
                self.campaign_id, position, number))
        except admin_ops.AdminError as exc:
            if exc.code == "conversation_busy":
                raise  # an agent turn held it for long: the job runs again later (its Retry)
            if exc.code == "recipient_gone":
                return  # erased meanwhile: the erase settled its place on the list
            self._settle(number, SKIPPED_CODES.get(exc.code, "failed"), op_id, reason=exc.code)
            return
        except (UponAIPermanentError, TwilioPermanentError) as exc:
            if isinstance(exc, CredentialsError):
                raise  # the operator's to fix: the batch fails into the failed-job registry, for a requeue
            self._settle(number, "failed", op_id, reason=type(exc).__name__)
            return
        self.campaigns.link_conversation(cid, self.campaign_id, number, self.settings.data_retention_seconds)
        self._settle(number, "sent", op_id)

    def _settle(self, number: str, outcome: str, op_id: str, reason: str = "") -> None:
        if self.campaigns.settle(self.campaign_id, number, outcome):
            log.info("campaign=%s op=%s to=%s %s%s", self.campaign_id, op_id, mask_number(number), outcome,
                     f" ({reason})" if reason else "")

    def _continue_in(self, seconds: float) -> None:
        """Queue this batch's next run through RQ's scheduler (when a slot of the rate is near)."""
        at = datetime.now(UTC) + timedelta(seconds=max(seconds, 0.001))
        job = campaign_batch_job(self.queue, self.settings, self.campaign_id, self.batch, run=self.run + 1)
        with self.queue.connection.pipeline() as pipe:
            queue_campaign_batch(self.queue, job, at=at, pipeline=pipe)
            pipe.execute()

    def _chain(self) -> None:
        """Queue the batch CAMPAIGN_PARALLEL_BATCHES further on, once."""
        campaign = self.campaigns.campaign(self.campaign_id)
        following = self.batch + int(campaign.get("parallel") or 1)
        if following >= int(campaign.get("batches") or 0) or campaign.get("status") != "sending":
            return
        job = campaign_batch_job(self.queue, self.settings, self.campaign_id, following)
        self.campaigns.chain_once(self.campaign_id, self.batch,
                                  lambda pipe: queue_campaign_batch(self.queue, job, at=None, pipeline=pipe))


def send_batch(services: Services, queue: Queue, campaign_id: str, batch: int, run: int) -> dict[str, Any]:
    """Text one batch of a campaign (see the module docstring); returns what became of it."""
    outcome = BatchRun(services, queue, campaign_id, batch, run).go()
    log.info("campaign=%s batch=%d run=%d %s", campaign_id, batch, run, outcome)
    return {"campaign_id": campaign_id, "batch": batch, "outcome": outcome}


def send_batch_job(campaign_id: str, batch: int, run: int = 0) -> dict[str, Any]:
    """Job: text one batch of a campaign."""
    from workers import jobs

    services = jobs.current_services()
    return send_batch(services, Queue(CAMPAIGN_QUEUE_NAME, connection=services.store.redis), campaign_id, batch, run)
