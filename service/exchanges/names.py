"""Names the configuration checks without importing python-threatexchange (it is only loaded to sync)."""

from __future__ import annotations

# python-threatexchange's ``NCMECEnvironment`` member names.
NCMEC_ENVIRONMENTS = (
    "Industry", "Industry_Exploitative", "LawEnforcement", "NGO", "Exploitative", "NGO_Generative_AI",
    "NGO_Generative_AI_Exploitative", "test_Industry", "test_Industry_Exploitative", "test_LawEnforcement",
    "test_NGO", "test_Exploitative", "test_NGO_Generative_AI", "test_NGO_Generative_AI_Exploitative",
)

# Hash kinds the service matches; everything else an exchange sends is counted and skipped.
USABLE_KINDS = ("sha1", "md5", "pdq")
