"""Override a script's UPPERCASE constants from config files and ``--KEY=value`` flags, type-checked.

Usage at the top of a script, after its constants (the nanoGPT pattern, minus the ``exec`` of argv):

    config = apply_overrides(globals(), sys.argv[1:])

``python smart.py config/local.py --BETA=0.0 --REWARD_WEIGHTS="{'CE': 1.0}"`` first applies the assignments
of ``config/local.py``, then each flag, left to right. A key the script does not define, or a value whose type
differs from the constant's, is a ``ConfigError`` that names the key, the value and what was expected, so a
typo fails before any model is loaded instead of being silently ignored.

The expected type is the constant's annotation when it has one (``CHECKPOINT: str | None = None``), else the
type of its default; an int is accepted where a float is expected.
"""

from __future__ import annotations

import ast
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from smart_utils.run_folder import RUN_CONFIG_FILE, read_run_config, saved_config_files


class ConfigError(ValueError):
    """A bad override: unknown key, wrong type, unreadable config file."""


# Every config file's namespace, kept alive: a reward processor a config file defines stays a listed subclass of
# processors.Processor (subclass lists hold only weak references) for as long as the run lasts.
CONFIG_NAMESPACES: list[dict[str, Any]] = []


def is_knob(name: str) -> bool:
    """Script constants are the public UPPERCASE names."""
    return name.isupper() and not name.startswith("_")


def _matches(value: Any, expected: Any) -> bool:
    """isinstance() that also understands ``X | None``, ``dict[str, float]`` and int-for-float."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if origin is not None:
        if not isinstance(value, origin):
            return False
        args = typing.get_args(expected)
        if origin is dict and args:
            return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
        if origin in (list, tuple) and len(args) == 1:
            return all(_matches(item, args[0]) for item in value)
        return True
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return expected.__name__ if isinstance(expected, type) else str(expected)


def _parse_flag_value(raw: str, expected: Any) -> Any:
    """Read a flag's text as a Python literal; text that is not a literal is a string."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if _matches(raw, expected) and not _matches(value, expected):
        return raw  # --SOUNDFONT=123 means the string "123" when the constant is a string
    return value


def _read_config_file(path: str) -> dict[str, Any]:
    """Execute a config file in an empty namespace and return its UPPERCASE assignments."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist (arguments are config files or --KEY=value)")
    namespace: dict[str, Any] = {"__name__": f"config:{file.name}"}
    exec(compile(file.read_text(), str(file), "exec"), namespace)
    CONFIG_NAMESPACES.append(namespace)
    return {key: value for key, value in namespace.items() if is_knob(key)}


def apply_values(namespace: dict[str, Any], values: dict[str, Any], source: str) -> None:
    """Set each of ``values`` in ``namespace`` after checking the key exists and the type matches its default."""
    annotations = namespace.get("__annotations__", {})
    known = {key for key in namespace if is_knob(key)}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known settings: {', '.join(sorted(known))}"
            raise ConfigError(f"{source}: unknown setting {key!r}; {hint}")
        expected = annotations.get(key, type(namespace[key]))
        if not _matches(value, expected):
            raise ConfigError(
                f"{source}: {key}={value!r} has type {type(value).__name__}, "
                f"but {key} expects {_type_name(expected)} (default {namespace[key]!r})"
            )
        namespace[key] = value


def parse_flag(namespace: dict[str, Any], arg: str) -> dict[str, Any]:
    """``--KEY=value`` as {KEY: value}, the value read as the type the constant expects."""
    key, sep, raw = arg[2:].partition("=")
    if not sep:
        raise ConfigError(f"{arg}: flags must look like --KEY=value")
    if not is_knob(key) or key not in namespace:
        return {key: raw}  # apply_values reports the unknown key
    expected = namespace.get("__annotations__", {}).get(key, type(namespace[key]))
    return {key: _parse_flag_value(raw, expected)}


def apply_overrides(namespace: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """Apply config files and ``--KEY=value`` flags to ``namespace`` in place; return the resolved knobs."""
    for arg in argv:
        if arg.startswith("--"):
            apply_values(namespace, parse_flag(namespace, arg), arg)
        else:
            apply_values(namespace, _read_config_file(arg), arg)
    return {key: value for key, value in namespace.items() if is_knob(key)}


def config_files(argv: list[str]) -> list[str]:
    """The arguments that are config files (the rest are ``--KEY=value`` flags), in the order they apply."""
    return [arg for arg in argv if not arg.startswith("--")]


def resumed_config(namespace: dict[str, Any], argv: list[str], run_dir: str) -> dict[str, Any]:
    """Apply the constants a run was started with (its smart_config.json) to ``namespace``, to continue it.

    The run's copies of its config files run first, for what they define besides constants (a reward processor
    class, say); their constants are then replaced by the saved ones, so a config file edited since changes nothing.
    """
    if len(argv) > 1 or not argv[0].startswith("--RESUME="):
        raise ConfigError("--RESUME continues a run with its saved config; give no other arguments")
    saved = Path(run_dir) / RUN_CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"RESUME={run_dir!r} has no {RUN_CONFIG_FILE}; give a run directory made by smart.py")
    for copy in saved_config_files(run_dir):
        _read_config_file(str(copy))
    values = {k: v for k, v in json.loads(saved.read_text())["config"].items() if k != "RESUME"}
    apply_values(namespace, {**values, "OUTPUT_DIR": run_dir}, str(saved))
    return {**values, "RESUME": run_dir, "OUTPUT_DIR": run_dir}


def smart_constants(run_dir: str | Path | None = None) -> dict[str, Any]:
    """smart.py's constants: its defaults, with a run's saved ones (``run_dir``) over them. A tool that works
    without a run (evaluation of MIDI folders, the listening study) takes smart.py's defaults from here, so each
    default is written once, in smart.py; a run saved before a constant existed keeps that constant's default."""
    import smart

    constants = {key: value for key, value in vars(smart).items() if is_knob(key)}
    if run_dir is not None:
        constants.update(read_run_config(run_dir) or {})
    return constants
