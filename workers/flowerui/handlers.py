"""The pages and the action regionvault adds to Flower, as Flower handlers, and ``/metrics``.

They subclass Flower's own ``BaseHandler`` (and ``TaskView``), so they are authenticated and
rendered exactly like Flower's pages; ``Metrics`` is Flower's, made to authenticate too.
Blocking calls (the result backend, the journal) run on Flower's thread pool, never on the IO
loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import tornado.web
from flower.utils.tasks import get_task_by_id
from flower.views import BaseHandler
from flower.views.monitor import Metrics as FlowerMetrics
from flower.views.tasks import TaskView
from tornado import web
from tornado.escape import url_escape
from tornado.ioloop import IOLoop

from regionvault.domains import Domain, parse_domain
from regionvault.journal import BackupRecord
from regionvault.manifest import STEPS
from workers.flowerui.access import operator_name
from workers.flowerui.retry import FAILURE, RetryMark, RetryRefused, retry_task
from workers.names import TASK_PREFIX, step_of

T = TypeVar("T")

#: how long a retry waits for Flower's event state to know the new task before showing it
NEW_TASK_WAIT_SECONDS = 5.0
MAX_BACKUPS = 500

_BADGES = {
    # step states
    "pending": "text-bg-secondary", "running": "text-bg-primary",
    "retrying": "text-bg-warning", "done": "text-bg-success", "failed": "text-bg-danger",
    "cancelled": "text-bg-dark",
    # backup states
    "queued": "text-bg-secondary", "verified": "text-bg-success",
}


def state_badge(state: str) -> str:
    """The Bootstrap badge class Flower uses for a state like this one."""
    return _BADGES.get(str(state), "text-bg-secondary")


class _Blocking:
    """Run a blocking call on Flower's thread pool (the IO loop's default executor)."""

    @staticmethod
    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        return await IOLoop.current().run_in_executor(None, fn, *args)


class TaskPage(TaskView, _Blocking):
    """Flower's task page, with "Retry" on a failed regionvault task."""

    @web.authenticated
    async def get(self, task_id: str) -> None:
        task = get_task_by_id(self.application.events, task_id)
        if task is None:
            raise web.HTTPError(404, f"Unknown task '{task_id}'")
        task = self.format_task(task)
        name = str(task.name or "")
        retryable = task.state == FAILURE and name.startswith(TASK_PREFIX)
        step = step_of(name)
        # a step is re-sent with the rest of its backup's chain behind it (see retry.py)
        followed_by = [s.value for s in STEPS[STEPS.index(step) + 1:]] if step else []
        retried: RetryMark | None = None
        if retryable:
            try:
                retried = await self.off_loop(self.application.retry_marks.get, task_id)
            except redis.RedisError:
                retried = None  # the POST checks again and says so if it cannot
        self.render("regionvault_task.html", task=task,
                    read_only=self.application.options.read_only,
                    retryable=retryable, retried=retried, followed_by=followed_by)


class RetryTask(BaseHandler, _Blocking):
    """POST: re-send a failed regionvault task as it was, then show the new task."""

    def check_xsrf_cookie(self) -> None:
        # Authentication first, so an unauthenticated POST is a 401 like every other request.
        _ = self.current_user
        # Flower refuses cross-site requests (and checks the token under OAuth); the Retry
        # form always carries Tornado's token, so require it under every kind of auth.
        super().check_xsrf_cookie()
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    @web.authenticated
    async def post(self, task_id: str) -> None:
        if self.application.options.read_only:
            raise web.HTTPError(403, "Read only mode is enabled")
        user = operator_name(self.current_user, self.request.headers.get("Authorization"))
        try:
            mark = await self.off_loop(self._retry, task_id, user)
        except RetryRefused as exc:
            self.set_status(exc.status)
            self.render("regionvault_retry_refused.html", message=str(exc), task_id=task_id)
            return
        await self._until_known(mark.new_task_id)
        self.redirect(self.reverse_url("task", mark.new_task_id), status=303)

    def _retry(self, task_id: str, user: str) -> RetryMark:
        app = self.application
        try:
            return retry_task(self.capp, task_id, user, marks=app.retry_marks,
                              journal=app.journal)
        except redis.RedisError as exc:
            raise RetryRefused(503, (
                f"the result backend's Redis did not answer ({exc}); check the backend, then "
                "try again")) from exc

    async def _until_known(self, task_id: str) -> None:
        """Wait (briefly) for the task-sent event, so the new task's page exists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NEW_TASK_WAIT_SECONDS
        while get_task_by_id(self.application.events, task_id) is None:
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.1)


def backups_page(flower_url: str, domain: str) -> str:
    """The Backups page of ``domain`` in the Flower at ``flower_url`` (another domain's)."""
    return f"{flower_url.rstrip('/')}/backups?domain={url_escape(domain)}"


class BackupsPage(BaseHandler, _Blocking):
    """The journal's backups, newest first, with each step's state and task."""

    @web.authenticated
    async def get(self) -> None:
        domain = self.get_argument("domain", "", escape=False) or ""
        if domain and domain not in {d.value for d in Domain}:
            valid = ", ".join(d.value for d in Domain)
            raise web.HTTPError(400, f"unknown domain {domain!r} (domains: {valid})")
        here: list[Domain] = self.application.domains_here
        elsewhere: dict[Domain, str | None] = self.application.flowers_elsewhere
        if domain and parse_domain(domain) in elsewhere:
            # that domain's journal lives in its own broker, which this Flower never reads
            url = elsewhere[parse_domain(domain)]
            if url is None:
                raise web.HTTPError(404, f"domain {domain} has its own broker and Flower, "
                                         "and no flower_url is configured for it")
            self.redirect(backups_page(url, domain))
            return
        limit = self.get_argument("limit", 100, type=int)
        if not 1 <= limit <= MAX_BACKUPS:
            raise web.HTTPError(400, f"limit must be between 1 and {MAX_BACKUPS}")
        try:
            records: list[BackupRecord] = await self.off_loop(
                self.application.journal.recent, domain or None, limit)
        except redis.RedisError as exc:
            raise web.HTTPError(503, f"the backup journal could not be read ({exc})") from exc
        events = self.application.events
        self.render("backups.html", records=records, steps=STEPS, domain=domain,
                    domains=[d.value for d in here], limit=limit, state_badge=state_badge,
                    elsewhere={d.value: url for d, url in elsewhere.items()},
                    backups_page=backups_page,
                    # a step not sent yet (after a failure) has a task id but no task page
                    known_task=lambda task_id: get_task_by_id(events, task_id) is not None)


class Metrics(FlowerMetrics):
    """Flower's Prometheus metrics, behind the same authentication as every page.

    Flower's own ``/metrics`` handler never asks who is calling: Tornado checks credentials
    only when a handler reads ``current_user``, and unlike the pages its ``get`` is not
    ``@web.authenticated``, so anyone who reached the port read the metrics (task names,
    workers, queues). ``/healthcheck`` stays Flower's, open, for the Kubernetes probes.
    """

    @web.authenticated
    async def get(self) -> None:
        await super().get()


class Navbar(tornado.web.UIModule):
    """Flower's navigation bar with a "Backups" item after Flower's own items."""

    def render(self, active_tab: str = "") -> str:
        flower_nav = self.render_string("flower/navbar.html", active_tab=active_tab).decode()
        item = self.render_string("backups_nav_item.html",
                                  active=active_tab == "backups").decode()
        # Flower's first list is its primary navigation; the item goes at its end
        head, end_of_list, tail = flower_nav.partition("</ul>")
        return head + item + end_of_list + tail if end_of_list else flower_nav


def routes() -> list[tornado.web.URLSpec]:
    """The handlers to put in front of Flower's (its ``/task/...`` and ``/metrics`` replaced)."""
    return [
        tornado.web.url(r"/task/([^/]+)/retry", RetryTask, name="regionvault-retry"),
        tornado.web.url(r"/task/(.+)", TaskPage, name="task"),
        tornado.web.url(r"/backups", BackupsPage, name="backups"),
        tornado.web.url(r"/metrics", Metrics),
    ]
