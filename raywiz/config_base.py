"""The one base class of every job-config section, and the error a config that cannot run raises (a leaf
module: it imports only pydantic).

Strict: a key the section does not declare is an error, so a typo in a YAML job fails loudly instead
of being silently ignored. Every stage's ``config.py`` and ``raywiz.config`` build on it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A job config that cannot run; the message names the file and the field."""
