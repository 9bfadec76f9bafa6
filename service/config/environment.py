"""Checks of what a configuration refers to outside the file: secrets and bank files.

Run by ``check-config`` and by the commands that start the service, not by every ``load_config``: a config
can be valid while the machine reading it (CI, a laptop) has neither the secrets nor the hash lists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from service.config.core import Secret
from service.config.matching import BanksSection
from service.config.problems import _Problems
from service.config.root import Config
from service.config.values import resolve_path
from service.errors import BankError


def secret_problems(cfg: Config, problems: _Problems) -> None:
    """Every ``{env: VAR}`` / ``{file: PATH}`` in the configuration must yield a value now."""
    for path, secret in _secrets(cfg, ""):
        why = secret.problem()
        if why is not None:
            problems.add(path, f"no secret available: {why}")


def _secrets(node: Any, path: str) -> list[tuple[str, Secret]]:
    if isinstance(node, Secret):
        return [(path, node)]
    if isinstance(node, tuple):
        return [found for i, item in enumerate(node) for found in _secrets(item, f"{path}[{i}]")]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [found for f in dataclasses.fields(node) if not f.metadata.get("internal")
                for found in _secrets(getattr(node, f.name), f"{path}.{f.name}" if path else f.name)]
    return []


def bank_file_problems(banks: BanksSection, base: Path, problems: _Problems) -> None:
    """Each bank file parses with the service's own bank parser (relative paths are relative to ``base``)."""
    from service.matchers.banks import load_bank  # the matcher stack (numpy, Pillow) only when asked

    for i, bank in enumerate(banks.list):
        if not (isinstance(bank.path, str) and bank.path):
            continue  # a wrong or missing path is reported by the validation
        path = resolve_path(base, bank.path)
        if not path.is_file():
            continue  # reported by the validation
        try:
            load_bank(dataclasses.replace(bank, path=str(path)))
        except BankError as exc:
            problems.add(f"banks.list[{i}].path", str(exc))
