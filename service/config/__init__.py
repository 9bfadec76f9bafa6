"""Configuration: YAML parsed once into frozen, typed dataclasses and injected everywhere.

``load_config(path)`` returns a :class:`Config` or raises :class:`ConfigError` listing every
problem with its key path.  No other module reads the YAML or the environment for settings;
secrets are resolved through :class:`Secret` (an environment variable or a file), never the YAML.

Layout (import from ``service.config``, which re-exports the public API):

* ``core``, ``sources``, ``matching``, ``actions``, ``scale``: the section dataclasses, grouped by concern;
  ``root``: :class:`Config`, the tree of sections.  Sections import nothing from the loader.
* ``yamlfile``: reading the file (strict UTF-8, alias expansion and nesting bounded, duplicate keys found).
* ``loader``: the generic typed YAML loader, ``config_from_dict`` and ``load_config``.
* ``validate``: semantic checks (with ``problems``: the collected problems; ``values``: paths and times;
  ``fields``: URL, path and secret checks).
* ``environment``: what the config refers to outside the file (secrets available, bank files parse), checked
  by ``check-config`` and by the commands that start the service (``load_config(secrets=, bank_files=)``).
* ``advice``: non-fatal warnings, ``warnings_for``.
"""

from service.config.actions import (
    ActionsSection,
    CategoryNotifySection,
    NotifySection,
    ProxyAuthSection,
    ReportingSection,
    RetrySection,
    ReviewerSection,
    ReviewSection,
    SmtpSection,
    TakedownRuleSection,
    TakedownSection,
    WikiAuthSection,
)
from service.config.advice import warnings_for
from service.config.core import (
    ConcurrencySection,
    HttpSection,
    NetworkSection,
    PipelineSection,
    Secret,
    ServiceSection,
    StoreSection,
    WikiSection,
)
from service.config.loader import config_from_dict, load_config
from service.config.matching import (
    STANDARD_THUMB_WIDTHS,
    BackoffSection,
    BankSection,
    BanksSection,
    CategoryRule,
    CircuitSection,
    ExchangeSection,
    FetchSection,
    FloodGuardSection,
    LabelCategory,
    PdqViewsSection,
    PdqViewThresholdsSection,
    PhotoDnaSection,
    RescanSection,
    RetroSection,
    ThumbnailSection,
)
from service.config.media import (
    AnimationSection,
    DocumentSection,
    MediaSection,
    VideoSection,
    VpdqBankSection,
)
from service.config.problems import ConfigFileError, problem_lines
from service.config.root import Config
from service.config.scale import BackfillSection, WorkSection
from service.config.sources import (
    EventStreamsSection,
    KafkaConnectionSection,
    KafkaSection,
    MwApiSection,
    ReconnectSection,
    SourceSection,
    kafka_client_options,
)
from service.config.validate import GENERIC_AGENTS, PHOTODNA_MAX_BYTES, PHOTODNA_MIN_SIDE
from service.config.values import EMAIL_RE, parse_time, resolve_path
from service.errors import ConfigError

__all__ = [
    "EMAIL_RE",
    "GENERIC_AGENTS",
    "PHOTODNA_MAX_BYTES",
    "PHOTODNA_MIN_SIDE",
    "STANDARD_THUMB_WIDTHS",
    "ActionsSection",
    "AnimationSection",
    "BackfillSection",
    "BackoffSection",
    "BankSection",
    "BanksSection",
    "CategoryNotifySection",
    "CategoryRule",
    "CircuitSection",
    "ConcurrencySection",
    "Config",
    "ConfigError",
    "ConfigFileError",
    "DocumentSection",
    "EventStreamsSection",
    "ExchangeSection",
    "FetchSection",
    "FloodGuardSection",
    "HttpSection",
    "KafkaConnectionSection",
    "KafkaSection",
    "LabelCategory",
    "MediaSection",
    "MwApiSection",
    "NetworkSection",
    "NotifySection",
    "PdqViewThresholdsSection",
    "PdqViewsSection",
    "PhotoDnaSection",
    "PipelineSection",
    "ProxyAuthSection",
    "ReconnectSection",
    "ReportingSection",
    "RescanSection",
    "RetroSection",
    "RetrySection",
    "ReviewSection",
    "ReviewerSection",
    "Secret",
    "ServiceSection",
    "SmtpSection",
    "SourceSection",
    "StoreSection",
    "TakedownRuleSection",
    "TakedownSection",
    "ThumbnailSection",
    "VideoSection",
    "VpdqBankSection",
    "WikiAuthSection",
    "WikiSection",
    "WorkSection",
    "config_from_dict",
    "kafka_client_options",
    "load_config",
    "parse_time",
    "problem_lines",
    "resolve_path",
    "warnings_for",
]
