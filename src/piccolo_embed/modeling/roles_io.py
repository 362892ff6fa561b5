"""Reading and writing the role settings that a saved model carries (``piccolo_embed.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from piccolo_embed.atomic import write_json_atomic
from piccolo_embed.types import Role, RoleSpec, RoleSpecs

ROLE_FILE = "piccolo_embed.json"
FORMAT_VERSION = 1


def save_role_specs(directory: str | Path, specs: RoleSpecs) -> Path:
    """Write ``specs`` to ``directory/piccolo_embed.json`` (atomically) and return the path."""
    missing = [r.value for r in Role if r not in specs]
    if missing:
        raise ValueError(f"role specs are missing roles: {', '.join(missing)}")
    path = Path(directory) / ROLE_FILE
    payload = {
        "format_version": FORMAT_VERSION,
        "roles": {role.value: specs[role].to_dict() for role in Role},
    }
    write_json_atomic(path, payload)
    return path


def load_role_specs(directory: str | Path) -> RoleSpecs | None:
    """Read role settings from ``directory``; ``None`` when the model has none.

    Raises:
        ValueError: The file exists but is malformed (the message names the file and field).
    """
    path = Path(directory) / ROLE_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        roles = payload["roles"]
        specs = {
            Role.parse(name): RoleSpec(prefix=value["prefix"], max_length=int(value["max_length"]))
            for name, value in roles.items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed role settings ({err})") from err
    missing = [r.value for r in Role if r not in specs]
    if missing:
        raise ValueError(f"{path}: field 'roles' lacks {', '.join(missing)}")
    return specs
