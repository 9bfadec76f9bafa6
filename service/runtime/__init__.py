"""The process runtime every role shares: who owns the long-lived tasks (:mod:`service.runtime.supervisor`),
the checkpoint committer (:mod:`service.runtime.committer`) and the HTTP start-up with its health checks
(:mod:`service.runtime.http`)."""

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
