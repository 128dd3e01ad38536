"""NVIDIA's XID catalogue as this project classifies it: one data file, xid_catalogue.json, maps each
listed XID code to the action it calls for. Each entry keeps the catalogue's immediate action as written
(`bucket`); its `action` is that bucket's `mapping`, or differs with a `deviation` saying why. A code the
file does not list is "unknown", never guessed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# The recommended actions, least severe first: the most severe cause of a GPU wins. "unknown" (an XID
# the catalogue file does not classify) ranks above "none", below every action the catalogue names.
ACTIONS = ("none", "unknown", "restart_application", "reset_gpu", "reboot_node", "inspect_hardware")
SEVERITY = {action: rank for rank, action in enumerate(ACTIONS)}
CATALOGUE_ACTIONS = frozenset(ACTIONS) - {"unknown"}  # what an entry of the data file may say
UNKNOWN = "unknown"
DATA_FILE = "xid_catalogue.json"


@dataclass(frozen=True, slots=True)
class XidEntry:
    xid: int
    description: str
    action: str


@dataclass(frozen=True, slots=True)
class XidCatalogue:
    source: str
    reviewed: str
    entries: dict[int, XidEntry]

    def action(self, code: int | str | None) -> str:
        """The action for an XID code (an int, or "other" for a code outside NVIDIA's numbering)."""
        entry = self.entries.get(code) if isinstance(code, int) else None
        return entry.action if entry else UNKNOWN


def parse_catalogue(doc: Any) -> XidCatalogue:
    """ValueError naming the field when the document is not a well-formed catalogue."""
    if not isinstance(doc, dict):
        raise ValueError("XID catalogue: expected a JSON object")
    for key in ("source", "reviewed"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ValueError(f"XID catalogue: `{key}` must be a non-empty string")
    mapping = doc.get("mapping")
    if not isinstance(mapping, dict) or not mapping or not set(mapping.values()) <= CATALOGUE_ACTIONS:
        raise ValueError(f"XID catalogue: `mapping` must map buckets to {sorted(CATALOGUE_ACTIONS)}")
    if not isinstance(doc.get("xids"), list) or not doc["xids"]:
        raise ValueError("XID catalogue: `xids` must be a non-empty list")
    entries: dict[int, XidEntry] = {}
    for i, item in enumerate(doc["xids"]):
        where = f"XID catalogue: xids[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object")
        code = item.get("xid")
        if type(code) is not int or code < 1:
            raise ValueError(f"{where}.xid: expected a positive integer, got {code!r}")
        if code in entries:
            raise ValueError(f"{where}.xid: {code} listed twice")
        action = item.get("action")
        if action not in CATALOGUE_ACTIONS:
            raise ValueError(f"{where}.action: {action!r} is not one of {sorted(CATALOGUE_ACTIONS)}")
        if not isinstance(item.get("description"), str) or not item["description"]:
            raise ValueError(f"{where}.description: must be a non-empty string")
        bucket = item.get("bucket")
        if bucket not in mapping:
            raise ValueError(f"{where}.bucket: {bucket!r} is not one of the `mapping` keys")
        deviation = item.get("deviation")
        if deviation is not None and (not isinstance(deviation, str) or not deviation):
            raise ValueError(f"{where}.deviation: must be a non-empty string")
        if action != mapping[bucket] and deviation is None:
            raise ValueError(
                f"{where}.action: {action!r} is not {mapping[bucket]!r}, the mapping of bucket {bucket!r}, "
                "and no `deviation` says why"
            )
        entries[code] = XidEntry(code, item["description"], action)
    return XidCatalogue(doc["source"], doc["reviewed"], entries)


@cache
def load_catalogue() -> XidCatalogue:
    """The catalogue shipped with the package (mfu_agent/health/xid_catalogue.json)."""
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_catalogue(json.loads(text))
