"""Run configuration: a TOML file plus ``--key value`` overrides, validated up front.

Each method declares a dataclass of options (subclassing :class:`RunConfig`);
field metadata may carry ``choices`` and a ``help`` string. Every rank parses and
validates the same input, so a bad config fails on every rank with the same
message, before any communication that could hang.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import stat
import tomllib
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """Bad user input; the message names the bad key/value and what is allowed."""


def option(default, help: str = "", choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """Options every method run shares."""

    output: str = option("", "result HDF5 file (default: results/<method>-<problem>.h5)")
    checkpoint: str = option("", "checkpoint file (default: <output stem>.ckpt.h5)")
    checkpoint_every: int = option(0, "write a checkpoint every k iterations (0: never)")
    restart: str = option("", "continue from this checkpoint file")
    overwrite: bool = option(False, "replace an existing --output file (refused otherwise)")
    quiet: bool = option(False, "rank 0 prints no progress")
    seed: int = option(0, "random seed")

    method = "run"

    def validate(self, comm_size: int) -> None:
        """Method-specific checks; subclasses extend and call super()."""
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every = {self.checkpoint_every}: must be >= 0 (0 disables)")

    def default_output(self) -> str:
        name = getattr(self, "problem", None)
        if name and ":" in name:  # package.module:name or path/file.py:name -> name
            name = name.rsplit(":", 1)[-1]
        return os.path.join("results", f"{self.method}-{name}.h5" if name else f"{self.method}.h5")

    def output_stem(self) -> str:
        """The output path without its .h5: the default name of every file written beside it."""
        return self.output[:-3] if self.output.endswith(".h5") else self.output

    def resolve_paths(self) -> None:
        if not self.output:
            self.output = self.default_output()
        if not self.checkpoint:
            self.checkpoint = self.output_stem() + ".ckpt.h5"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, raw, typ, choices):
    origin = typing.get_origin(typ)
    if raw is FLAG and typ is not bool:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} needs a value: {flag} VALUE (only on/off options such as --overwrite stand alone)")
    if origin is typing.Union or str(origin) == "types.UnionType":
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if isinstance(raw, bool):
                value = raw
            elif str(raw).lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError
        elif typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = int(raw) if not isinstance(raw, str) else int(raw, 0)
        elif typ is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ConfigError(f"{name} = {raw!r}: must be a finite number")
        elif typ is str:
            if not isinstance(raw, str):   # TOML `output = 5`: a number where a name belongs
                raise ConfigError(f"{name} = {raw!r}: expected a string (in quotes in TOML)")
            value = raw
        elif typ is dict or typing.get_origin(typ) is dict:
            value = parse_mapping(name, raw)
        elif typing.get_origin(typ) is list:
            inner = typing.get_args(typ)[0]
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s.strip()]
            value = [_coerce(name, item, inner, None) for item in items]
        else:
            raise TypeError(f"option {name}: unsupported type {typ}")
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{name} = {raw!r}: expected {getattr(typ, '__name__', typ)}") from None
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} = {value!r} is not allowed; choose one of: {', '.join(map(str, choices))}")
    return value


def _scalar(text: str):
    """A k=v value: JSON (numbers, true/false, lists, quoted strings) where it parses, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refusing a key given twice (json.loads would keep the last silently)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{', '.join(map(repr, twice))} given twice")
    return dict(pairs)


def parse_mapping(name: str, raw) -> dict:
    """A table of arguments: a dict (TOML), a JSON object, or ``k=v,k=v`` (values read as JSON where
    they parse: ``a=1,u0=[1.5,3],lam="-1+2j"``; commas inside brackets belong to the value)."""
    if isinstance(raw, dict):
        return dict(raw)
    text = str(raw).strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except ValueError as err:
            raise ConfigError(f"{name} = {text!r} is not valid JSON ({err}); "
                              "e.g. '{\"a\": 1.0}' or a=1.0,b=2") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{name} = {text!r}: expected a JSON object")
        return value
    items, depth, start = [], 0, 0
    for i, c in enumerate(text + ","):
        depth += (c in "[{") - (c in "]}")
        if c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{name} = {text!r}: {item!r} is not key=value; write k=v,k=v or a JSON object")
        if key.strip() in out:   # k=1,k=2: one of them is a slip
            raise ConfigError(f"{name} = {text!r} gives {key.strip()!r} twice; give each key once")
        out[key.strip()] = _scalar(value.strip())
    return out


class _Flag(str):
    """The value of an option given without one (``--overwrite``): true for a flag, an error otherwise."""


FLAG = _Flag("true")


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs; dashes in keys become underscores."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: options are given as --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = FLAG
        out[key.replace("-", "_")] = value
        i += 1
    return out


def read_config_file(config_file: str) -> bytes:
    """The bytes of a TOML config file; ConfigError (naming the file) if it cannot be read."""
    try:   # a FIFO or device would block or never end: only regular files are read
        mode = os.stat(config_file).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ConfigError(f"config file {config_file!r} is not a regular file; give a TOML file")
    except FileNotFoundError:
        raise ConfigError(f"config file {config_file!r} does not exist") from None
    except OSError:
        pass   # reported by open() below with its reason
    try:
        with open(config_file, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {config_file!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {config_file!r} is a directory; give a TOML file") from None
    except OSError as err:
        raise ConfigError(f"config file {config_file!r} cannot be read ({err.strerror or err})") from None


def build_config(cls, config_file: str | None, overrides: dict[str, object], comm_size: int,
                 config_bytes: bytes | None = None):
    """TOML file (flat, or with a table named after the method) updated by overrides, then validated.

    ``config_bytes``: the file's contents if already read (the CLI reads it on rank 0 only and
    broadcasts it, so ranks with different working directories parse the same text)."""
    values: dict[str, object] = {}
    if config_file:
        if config_bytes is None:
            config_bytes = read_config_file(config_file)
        try:
            data = tomllib.loads(config_bytes.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {config_file!r} is not UTF-8 text ({err.reason} at byte "
                              f"{err.start}); TOML files are UTF-8") from None
        except tomllib.TOMLDecodeError as err:
            hint = ("; a key given twice, e.g. problem = \"...\" beside a [problem] table: put the spec inside "
                    "the table as name = \"...\"" if "Cannot overwrite a value" in str(err) else "")
            raise ConfigError(f"config file {config_file!r} is not valid TOML: {err}{hint}") from None
        values.update(data.pop(cls.method, {}) if isinstance(data.get(cls.method), dict) else {})
        values.update(data)
    if isinstance(values.get("problem"), dict):  # [problem] table: name = spec, the rest constructor arguments
        table = dict(values.pop("problem"))
        if "name" in table:
            values["problem"] = table.pop("name")
        values["problem_args"] = {**parse_mapping("problem_args", values.get("problem_args", {})), **table}
    if "problem_args" in overrides and "problem_args" in values:  # --problem-args adds to the [problem] table
        overrides = {**overrides, "problem_args": {**parse_mapping("problem_args", values["problem_args"]),
                                                   **parse_mapping("problem_args", overrides["problem_args"])}}
    values.update(overrides)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"did you mean --{close[0].replace('_', '-')}? " if close else ""
            raise ConfigError(
                f"unknown option {key!r} for {cls.method}; {hint}allowed: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(key, raw, hints[key], fields[key].metadata.get("choices"))
    cfg = cls(**kwargs)
    cfg.validate(comm_size)
    cfg.resolve_paths()
    return cfg


def describe(cls) -> str:
    """Help text listing a method's options with defaults."""
    lines = []
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        extra = f" (one of: {', '.join(map(str, choices))})" if choices else ""
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"  --{f.name.replace('_', '-'):<22} {f.metadata.get('help', '')}{extra} [default: {default!r}]")
    return "\n".join(lines)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
