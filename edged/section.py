"""The strict base of every config section, and the name pattern.

Its own module so that both edged/config.py and the camera kinds in edged/sources/ build on it: the
config imports the source registry (for the cameras' union), so the sources cannot import the config.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe in MQTT topics, file names and SQL values


class Section(BaseModel):
    """A config section: unknown keys refused (typos are caught), frozen, numbers finite.

    allow_inf_nan=False: every float key of every section refuses .inf and .nan ("Input should be a
    finite number", naming the key): a TTL of .inf never expires, a NaN threshold rejects nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
