"""eHerkenning levels of assurance: their names, the URNs brokers send, and their order."""

from __future__ import annotations

from typing import Any

__all__ = ("LEVELS", "level_at_least", "level_of")

#: Lowest first; the URN is what a broker sends in the ID token's ``acr`` claim.
LEVELS = {
    "EH1": "urn:etoegang:core:assurance-class:loa1",
    "EH2": "urn:etoegang:core:assurance-class:loa2",
    "EH2+": "urn:etoegang:core:assurance-class:loa2plus",
    "EH3": "urn:etoegang:core:assurance-class:loa3",
    "EH4": "urn:etoegang:core:assurance-class:loa4",
}
_BY_URN = {urn: name for name, urn in LEVELS.items()}
_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def level_of(value: Any) -> str | None:
    """``EH3`` for ``EH3`` or ``urn:etoegang:core:assurance-class:loa3``; None for anything else."""
    if isinstance(value, str):
        return value if value in _RANK else _BY_URN.get(value)
    return None


def level_at_least(level: str | None, required: str) -> bool:
    """Whether ``level`` is ``required`` or higher (None, an unknown level, is not)."""
    return level is not None and level in _RANK and _RANK[level] >= _RANK[required]
