"""Parsing of option strings shared by several commands (kept out of cli.py, which nothing imports)."""

from __future__ import annotations

import json

from workers.errors import InputError
from workers.strict_json import StrictJsonError, loads_strict


def parse_set_options(pairs: list[str]) -> dict:
    """["training.epochs=3", "variant=repeat"] -> {"training": {"epochs": 3}, "variant": "repeat"}."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(None, f"--set expects KEY=VALUE, got {pair!r}")
        value = _option_value(key, raw)
        node = options
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(None, f"--set {key}: {part} is not a group of options")
        node[leaf] = value
    return options


def _option_value(key: str, raw: str) -> object:
    """A --set value: strict JSON (no NaN/Infinity, no duplicate keys: issue 11, `prior.grid=Infinity` wrote
    `"grid": null` into job.json), or the raw text when it is not JSON at all (a bare string such as repeat)."""
    try:
        json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, an int of over 4300 digits
        return raw
    try:
        return loads_strict(raw)
    except StrictJsonError as exc:
        raise InputError(None, f"--set {key}: {exc}") from None


def parse_quality(text: str, flag: str = "--quality") -> int | float:
    """"3" -> 3, "22.5" -> 22.5 (a codec's own quality: an SSF index, a CRF)."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(None, f"{flag} takes a number, got {text!r}") from None
    return int(value) if value.is_integer() else value


def parse_qualities(text: str | None, flag: str = "--qualities") -> list[int | float] | None:
    """"1,2,3" -> [1, 2, 3] (sorted, unique); None stays None (the codec's default points)."""
    if text is None:
        return None
    values = {parse_quality(v.strip(), flag) for v in text.split(",") if v.strip()}
    if not values:
        raise InputError(None, f"{flag} is empty")
    return sorted(values)


def parse_codec_settings(pairs: list[str]) -> dict[str, str]:
    """["preset=slow"] -> {"preset": "slow"}."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(None, f"--codec-set expects KEY=VALUE, got {pair!r}")
        settings[key] = value
    return settings
