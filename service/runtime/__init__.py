"""The process runtime: who owns the long-lived tasks (:mod:`service.runtime.supervisor`)."""

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
