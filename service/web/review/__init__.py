"""The review queue for Trust & Safety staff (queue, match detail, decisions, audit log, sign-in).

``service.web.review.app.ReviewUI`` is mounted at ``/review`` on the service's HTTP server.
"""
