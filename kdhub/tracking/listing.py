"""``kdhub runs --status``: the runs that ended KILLED or FAILED (or in any state), newest first, with their resume."""

from __future__ import annotations

import difflib
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.tracking.failures import resume_command
from kdhub.tracking.heartbeat import liveness
from kdhub.tracking.store import _existing_client, tracking_uri

__all__ = ["STATUSES", "parse_statuses", "run_lines", "runs_with_status"]

STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
"""MLflow's run states, in the order ``kdhub runs --status all`` means them."""


def parse_statuses(text: str) -> list[str]:
    """``killed,failed`` (any case) or ``all`` as MLflow states; one line naming the bad one otherwise."""
    words = [w.strip().upper() for w in text.split(",") if w.strip()]
    if not words:
        raise KdhubError(f"--status: give one or more of {', '.join(STATUSES)} (comma separated) or all")
    if words == ["ALL"]:
        return list(STATUSES)
    for word in words:
        if word not in STATUSES:
            close = difflib.get_close_matches(word, STATUSES, n=1)
            hint = f"; did you mean {close[0].lower()}?" if close else ""
            raise KdhubError(f"--status: unknown run state {word.lower()!r} ({', '.join(STATUSES).lower()}, all){hint}")
    return list(dict.fromkeys(words))


def runs_with_status(uri: str | None, experiment: str | None, statuses: list[str]) -> list[dict[str, Any]]:
    """The runs in ``statuses``, newest first: id, name, status, failure reason and (where it applies) the
    command that resumes it. A RUNNING run says whether its process is alive."""
    resolved = tracking_uri(uri)
    client = _existing_client(resolved, "runs")
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise KdhubError(f"--experiment: there is no experiment {experiment!r} in {resolved}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    found = [run for status in statuses for run in client.search_runs(ids, f"attributes.status = '{status}'")]
    found.sort(key=lambda run: run.info.start_time or 0, reverse=True)
    rows = []
    for run in found:
        tags = dict(run.data.tags)
        reason = " ".join(tags.get("kdhub.failure", "").split())
        row = {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status, "reason": reason}
        resumable = run.info.status == "KILLED" or "resume with:" in reason
        if run.info.status == "RUNNING":
            alive, why = liveness({"tags": tags})
            row["why"], resumable = why if alive else f"stale: {why}", not alive
        row["resume"] = resume_command(run.info.run_id, uri) if resumable and "kdhub.study" not in tags else ""
        if resumable and "kdhub.study" in tags:
            row["resume"] = f"run study {tags['kdhub.study']!r} again"
        rows.append(row)
    return rows


def run_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per run for the terminal (the reason cut to 160 characters)."""
    lines = []
    for row in rows:
        line = f"{row['run_id']}  {row['status']:<9} {row['name']}"
        detail = row.get("why") or row["reason"].split(" (resume with:")[0]
        if detail:
            line += f"  ({detail[:160]})"
        if row["resume"]:
            line += f"  resume: {row['resume']}"
        lines.append(line)
    return lines
