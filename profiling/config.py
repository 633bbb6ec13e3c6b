"""The config schema: every field of a measured configuration and of a sweep's run, in one place.

A configuration (``Config``) is what one fresh process builds and measures; its fields carry
their type, default, allowed values and help text as dataclass metadata, and everything else
derives from them: the CLI's grid flags (``cli``), the sweep-file reader (``read_sweep_file``),
validation (``validate``), the analysis columns (``analysis_columns``) and the row key.

The key names only the fields that differ from their defaults (``depth=16|strategy=sqrt_n``),
so a field added later (with a default) leaves every old row's key unchanged and old result
folders stay resumable; readers recompute keys from the row's fields (``key_of_row``).

Strategy options are part of a configuration: ``segments``, ``slots``, ``budget`` (passed to
the strategy only when set; ``budget`` is bytes, also written "8MiB", and reaches a planner
as its ``budget_bytes``) and ``options``, any other keyword a user strategy takes.
``plugins`` are modules imported (in every process) before validation, so user strategies
registered there are known; a strategy written ``module:function`` is imported and registered
under that name.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

BACKENDS = ("numpy", "torch")
DEVICES = ("cpu", "cuda")
MODES = ("train", "predict")
OPTIMIZERS = ("none", "sgd", "momentum", "adam")
DTYPES = ("float32", "float64")
STRATEGY_OPTIONS = ("segments", "slots", "budget")


def spec(default, kind, help: str, choices=None, minimum=None, grid: bool = True, read=None):
    """A dataclass field with its schema: type, allowed values, lower bound, help text, and how text reads."""
    meta = {"kind": kind, "help": help, "choices": choices, "minimum": minimum, "grid": grid, "read": read or kind}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def known_strategies() -> list[str]:
    """Strategies the engine has registered (after any plugins were imported)."""
    import ckpt
    return ckpt.strategies()


def required_options(strategy: str) -> list[str]:
    """The config options ``strategy`` cannot run without (revolve: slots; optimal, chen_greedy: budget)."""
    from ckpt.strategies import option_names
    names = option_names(strategy)
    return [_OPTION_OF.get(k, k) for k in (names[1] if names else []) if k != "profile"]


def strategies_without_options() -> tuple[list[str], list[str]]:
    """What a sweep's strategy 'all' means: (strategies that need no option, those left out)."""
    names = known_strategies()
    return [s for s in names if not required_options(s)], [s for s in names if required_options(s)]


_KEYWORD_OF = {"budget": "budget_bytes"}            # the planners' own name of a config option
_OPTION_OF = {v: k for k, v in _KEYWORD_OF.items()}


def _takes(strategy: str, keyword: str | None) -> bool:
    """Whether the registered ``strategy`` has a parameter named ``keyword``."""
    import inspect
    import ckpt
    if keyword is None or strategy not in ckpt.strategies():
        return False
    return keyword in inspect.signature(ckpt.get_strategy(strategy)).parameters


def read_bytes(text) -> int:
    """Bytes from "8MiB", "512MB" or an int (``ckpt.parse_bytes``)."""
    import ckpt
    return ckpt.parse_bytes(text)


@dataclass(frozen=True)
class Config:
    """One measured configuration: what to build and how to step it."""

    backend: str = spec("numpy", str, "numpy (the engine) and/or torch", BACKENDS)
    device: str = spec("cpu", str, "cpu and/or cuda (cuda needs torch with a GPU)", DEVICES)
    depth: int = spec(8, int, "number of Dense+ReLU stages", minimum=1)
    width: int = spec(128, int, "units per stage (square MLP)", minimum=1)
    batch: int = spec(256, int, "rows per batch", minimum=1)
    dtype: str = spec("float32", str, "float32 and/or float64", DTYPES)
    strategy: str = spec("store_all", str, "activation strategies, 'all' (every one that needs no option), or "
                         "module:function (ignored in predict mode)", known_strategies)
    mode: str = spec("train", str, "train (forward+backward+optimizer step) and/or predict (forward only)", MODES)
    optimizer: str = spec("sgd", str, "none, sgd, momentum, adam (state: 0, 0, 1, 2 copies of the parameters)",
                          OPTIMIZERS)
    segments: int | None = spec(None, int, "strategy option: segments (sqrt_n)", minimum=1)
    slots: int | None = spec(None, int, "strategy option: checkpoint slots (revolve)", minimum=1)
    budget: int | None = spec(None, int, "strategy option: byte budget, e.g. 8MiB (optimal, chen_greedy)",
                              minimum=1, read=read_bytes)
    fused: bool = spec(False, bool, "fuse the optimizer step into backward (true/false)", (False, True))
    options: dict = spec({}, dict, "other keywords of the strategy, as KEY=VALUE")
    repeat: int = spec(0, int, "index of the fresh process measuring this configuration", minimum=0, grid=False)

    def __post_init__(self):
        if isinstance(self.budget, str):                  # a sweep file's budget = "8MiB"
            object.__setattr__(self, "budget", read_bytes(self.budget))

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self) -> str:
        """A stable text identity (used by ``--resume``): the fields that differ from their defaults."""
        parts = [f"{f.name}={_text(getattr(self, f.name))}" for f in fields(self)
                 if getattr(self, f.name) != _default(f)]
        return "|".join(parts) or "defaults"

    @property
    def strategy_options(self) -> dict:
        """The keywords the strategy is called with (options left unset are not passed)."""
        named = {_KEYWORD_OF.get(k, k) if _takes(self.strategy, _KEYWORD_OF.get(k)) else k: getattr(self, k)
                 for k in STRATEGY_OPTIONS if getattr(self, k) is not None}
        return {**named, **self.options}


    def as_dict(self) -> dict:
        """The fields as a plain dict (``options`` as canonical JSON text, so rows stay flat)."""
        d = asdict(self)
        d["options"] = _text(self.options) if self.options else ""
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A Config from a dict (a row) holding its fields; absent fields take their defaults."""
        given = {f.name: d[f.name] for f in fields(cls) if f.name in d and not _is_missing(d[f.name])}
        if isinstance(given.get("options"), str):
            given["options"] = json.loads(given["options"]) if given["options"] else {}
        return cls(**given)


def _text(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


SCHEMA = {f.name: f for f in fields(Config)}
GRID_FIELDS = [f.name for f in fields(Config) if f.metadata["grid"]]


def analysis_columns() -> list[str]:
    """The columns that identify a configuration in analysis (every grid field)."""
    return list(GRID_FIELDS)


def unset_columns(df) -> list[str]:
    """Optional fields (strategy options, fused, options) left at their default in every row of a frame."""
    optional = [f for f in fields(Config) if f.metadata["grid"] and _default(f) in (None, False, {})]
    return [f.name for f in optional if f.name in df and df[f.name].map(lambda v: _is_unset(v, f)).all()]


def _is_unset(v, f) -> bool:
    return _is_missing(v) or v == _default(f) or (f.name == "options" and v == "")


def key_of_row(row: dict) -> str:
    """The key of a stored row, recomputed from its fields (rows written before a field existed match)."""
    return Config.from_dict(row).key


# ----------------------------------------------------------------- plugins

def load_plugins(plugins=(), strategies=()) -> None:
    """Import plugin modules and register every ``module:function`` strategy, so validation knows them."""
    for name in plugins:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise ValueError(f"config: plugin {name!r} cannot be imported ({type(e).__name__}: {e}); "
                             f"is it on PYTHONPATH here and on every worker?") from None
    for ref in strategies:
        if isinstance(ref, str) and ":" in ref:
            register_reference(ref)


def register_reference(ref: str) -> None:
    """Register the function named by ``module:function`` as the strategy ``ref``."""
    import ckpt
    if ref in ckpt.strategies():
        return
    module, _, name = ref.partition(":")
    load_plugins([module])
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"config: strategy {ref!r}: module {module!r} has no function {name!r}")
    ckpt.register_strategy(ref, fn)


# ----------------------------------------------------------------- validation

def check_value(name: str, value, where: str = "config") -> None:
    """Raise naming the field, the bad value and what is allowed."""
    meta = SCHEMA[name].metadata
    kind, choices, minimum = meta["kind"], meta["choices"], meta["minimum"]
    if value is None and SCHEMA[name].default is None:
        return
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{where}: {name} must be an int{_bound(minimum)}, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
    if kind is dict and not isinstance(value, dict):
        raise ValueError(f"{where}: {name} must be a table of keyword = value, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name} must be an int{_bound(minimum)}, got {value!r}")
    allowed = choices() if callable(choices) else choices
    if allowed is not None and kind is not bool and value not in allowed:
        hint = "; a user strategy: name its module with --plugin, or write module:function" if name == "strategy" else ""
        raise ValueError(f"{where}: unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}{hint}")


def _bound(minimum) -> str:
    return "" if minimum is None else f" ≥ {minimum}"


def validate(c: Config) -> Config:
    """Raise a clear error naming the bad field, its value and the allowed ones; return c."""
    for name in GRID_FIELDS:
        if name == "strategy" and c.mode != "train":
            continue
        check_value(name, getattr(c, name), "profiling")
    check_value("repeat", c.repeat, "profiling")
    if c.backend == "numpy" and c.device != "cpu":
        raise ValueError(f"profiling: the numpy backend runs on cpu only, got device={c.device!r}; "
                         f"use backend='torch' for cuda")
    if c.fused and (c.mode != "train" or c.optimizer == "none"):
        raise ValueError(f"profiling: fused=true fuses the optimizer step into the backward, so it needs "
                         f"mode='train' and an optimizer (sgd, momentum, adam), got mode={c.mode!r}, "
                         f"optimizer={c.optimizer!r}; put fused=true in a grid of its own with those")
    if c.mode == "train":
        _check_strategy_takes(c)
    return c


def _check_strategy_takes(c: Config) -> None:
    """The options the strategy needs (from its signature), and those given (a schedule is built with them).

    Strategies that plan from a cost profile are built in the child, where their profile is made.
    """
    import ckpt
    missing = [k for k in required_options(c.strategy) if k not in c.strategy_options and
               getattr(c, k, None) is None]
    if missing:
        raise ValueError(f"profiling: strategy {c.strategy!r} needs {', '.join('--' + k for k in missing)} "
                         f"(e.g. revolve --slots 3, optimal --budget 8MiB); give it in the strategy's own grid")
    if not c.strategy_options or ckpt.needs_profile(c.strategy):
        return                                            # planners are checked when they plan (in the row)
    try:
        if c.strategy_options:
            ckpt.make_schedule(c.strategy, c.depth, **c.strategy_options)
    except TypeError as e:
        raise ValueError(f"profiling: strategy {c.strategy!r} does not take {c.strategy_options} ({e}); "
                         f"give only the options it accepts: put strategies with different options in grids "
                         f"of their own (a sweep file holds several [[grid]] tables)") from None


# ----------------------------------------------------------------- how a sweep runs

@dataclass(frozen=True)
class RunOption:
    """One option of how each configuration runs (the [run] table and its CLI flags)."""

    kind: type
    default: object
    minimum: float
    strict: bool            # True: must be > minimum; False: ≥ minimum
    help: str


RUN_OPTIONS = {
    "timeout": RunOption(float, 300.0, 0, True, "seconds before a configuration is killed and recorded as 'timeout'"),
    "warmup": RunOption(int, 1, 0, False, "untimed full-size steps before timing, the metered step included"),
    "iters": RunOption(int, 3, 1, False, "timed steps per configuration"),
    "budget_s": RunOption(float, 2.0, 0, True, "stop timing a configuration after this many seconds"),
    "threads": RunOption(int, 1, 1, False, "BLAS/OpenMP threads in each child (1: steadier timings on a shared machine)"),
    "repeats": RunOption(int, 1, 1, False, "fresh processes per configuration"),
    "memory_limit_mb": RunOption(int, None, 1, False, "address space (MiB) a child may add after its imports; "
                                                      "beyond it allocations fail and the row is 'oom'"),
    "memcheck": RunOption(bool, True, 0, False, "before running, refuse a configuration whose predicted bytes "
                                                "exceed what its process may use (row status 'refused')"),
}


def check_run_option(name: str, value, where: str = "run") -> object:
    """The value of a run option, checked (type and bound); raises naming it and what is allowed."""
    if name not in RUN_OPTIONS:
        raise ValueError(f"{where}: unknown run option {name!r}; allowed: {', '.join(RUN_OPTIONS)}")
    opt = RUN_OPTIONS[name]
    if opt.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if opt.kind is int:
        numeric = numeric and float(value).is_integer()
    ok = numeric and (value > opt.minimum if opt.strict else value >= opt.minimum)
    if not ok:
        kind = "a number" if opt.kind is float else "an integer"
        bound = f"> {opt.minimum:g}" if opt.strict else f"≥ {opt.minimum:g}"
        raise ValueError(f"{where}: {name} must be {kind} {bound}, got {value!r}")
    return opt.kind(value)


# ----------------------------------------------------------------- sweep files (TOML / YAML / JSON)

FILE_KEYS = ("grid", "run", "plugins")


def read_sweep_file(path) -> tuple[list[dict], dict, list[str]]:
    """(grids, run options, plugins) from a TOML, YAML or JSON sweep file, every value checked."""
    from pathlib import Path
    path = Path(path)
    where = f"sweep file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"config: no sweep file at {str(path)!r}")
    data = _parse_file(path, where)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table with keys {', '.join(FILE_KEYS)}, got {type(data).__name__}")
    unknown = set(data) - set(FILE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(FILE_KEYS)}")
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"{where}: `grid` must be a table ([grid]) or a list of tables ([[grid]]), got {grids!r}")
    if not grids:
        raise ValueError(f"{where}: has no [grid] / [[grid]] table")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ValueError(f"{where}: `run` must be a table of options, got {run!r}")
    run = {k: check_run_option(k, v, f"{where} [run]") for k, v in run.items()}
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ValueError(f"{where}: `plugins` must be a list of module names, got {plugins!r}")
    for g in grids:
        check_grid(g, where)
    return grids, run, plugins


def _parse_file(path, where: str):
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
        import tomllib
        return tomllib.loads(text)
    except ImportError:
        raise ValueError(f"{where}: YAML sweep files need PyYAML (pip install pyyaml); or use TOML") from None
    except Exception as e:                              # yaml.YAMLError, TOMLDecodeError, JSONDecodeError
        raise ValueError(f"{where} cannot be parsed: {type(e).__name__}: {e}") from None


def check_grid(grid: dict, where: str = "sweep") -> None:
    """Raise when a grid names a field the schema does not have."""
    unknown = set(grid) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown grid field(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(GRID_FIELDS)}")
    options = grid.get("options") if isinstance(grid.get("options"), dict) else {}
    empty = [k for k, v in [*grid.items(), *options.items()] if isinstance(v, (list, tuple)) and not v]
    if empty:
        raise ValueError(f"{where}: grid field(s) {', '.join(empty)} have no values (an empty list); "
                         f"give at least one value, or leave the field out for its default")
