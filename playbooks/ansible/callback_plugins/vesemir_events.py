# Vesemir's stdout callback: one JSON object per line for every event of a play, read
# live by the worker's ansible executor.
from __future__ import annotations

import json
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: vesemir_events
type: stdout
short_description: One JSON line per event, for Vesemir
description:
  - Task starts, per-host results (ok, changed, failed, unreachable, skipped) with
    their output, retries, and the final per-host stats, as JSON lines on stdout.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "vesemir_events"

    def _emit(self, **event):
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    def _result(self, status, result):
        outcome = result._result
        self._emit(
            type="result",
            status=status,
            host=result._host.get_name(),
            task=result._task.get_name(),
            rc=outcome.get("rc"),
            stdout=outcome.get("stdout", ""),
            stderr=outcome.get("stderr", ""),
            msg=_message(outcome),
        )

    def _item(self, result, failed):
        # Ansible strips `failed` from an item's result: the caller says which it was.
        outcome = result._result
        lines = list(outcome.get("report") or [])
        if failed:
            lines.append(str(outcome.get("msg", "")))
        self._emit(
            type="item",
            host=result._host.get_name(),
            task=result._task.get_name(),
            lines=[str(line) for line in lines if line],
            still_out=bool(outcome.get("still_out")),
        )

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit(type="task", task=task.get_name())

    def v2_runner_on_start(self, host, task):
        self._emit(type="start", host=host.get_name(), task=task.get_name())

    def v2_runner_on_ok(self, result):
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_runner_item_on_ok(self, result):
        self._item(result, failed=False)

    def v2_runner_item_on_failed(self, result):
        self._item(result, failed=True)

    def v2_runner_retry(self, result):
        outcome = result._result
        self._emit(
            type="retry",
            host=result._host.get_name(),
            task=result._task.get_name(),
            attempt=outcome.get("attempts"),
            retries=outcome.get("retries"),
            msg=str(outcome.get("msg", "")),
        )

    def v2_playbook_on_stats(self, stats):
        for host in sorted(stats.processed):
            self._emit(type="stats", host=host, **stats.summarize(host))


def _message(outcome):
    """The result's message; for a loop, the messages of the items that failed."""
    items = outcome.get("results")
    if isinstance(items, list):
        failed = [str(item.get("msg", "")) for item in items if isinstance(item, dict) and item.get("failed")]
        if failed:
            return "; ".join(failed)
    # Ansible strips `skipped` before callbacks see the result; the reason stays.
    reason = outcome.get("skip_reason") or outcome.get("skipped_reason")
    if reason:
        return str(reason)
    return str(outcome.get("msg", ""))
