"""The process runtime every role shares: who owns the long-lived tasks (:mod:`service.runtime.supervisor`),
the checkpoint committer (:mod:`service.runtime.committer`), the HTTP start-up with its health checks
(:mod:`service.runtime.http`) and the review backlog gauge (:mod:`service.runtime.backlog`)."""

from service.runtime.supervisor import (
    CRITICAL,
    RESTART,
    RestartPolicy,
    Supervised,
    Supervisor,
    TaskExited,
    TaskFailed,
    reap,
)

__all__ = ["CRITICAL", "RESTART", "RestartPolicy", "Supervised", "Supervisor", "TaskExited", "TaskFailed", "reap"]
