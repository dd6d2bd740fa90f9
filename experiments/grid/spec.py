"""Grid files: reading, merging and checking a grid YAML (``GridSpec``, ``Member``), member names,
and each member's resolved trainer config and config hash.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from e4e.inverters import METHODS, OPTIM_METHODS, TRAINED_METHODS

DEFAULT_RUNS_DIR = "runs"
STAGE_TAG = "grid.stage"
TEST_PREFIX = "test/"
REPO_ROOT = Path(__file__).resolve().parents[2]

GRID_KEYS = {"grid", "description", "extends", "domain", "config", "method_config", "switches", "method_defaults",
             "members", "overrides", "evaluate", "profiles", "exclude", "default_profile", "prepare"}
PREPARE_KEYS = {"command", "creates", "description"}
PROFILE_KEYS = {"description", "overrides", "methods", "members", "add_members", "evaluate", "exclude", "jobs"}
MEMBER_KEYS = {"method", "name", "depends_on", "overrides", "evaluate"}
SWITCH_KEYS = {"key", "label", "default"}
EVAL_KEYS = {"metrics", "n_images", "batch_size", "qualitative", "options", "data"}
#: the methods a member may name: those ``experiments.grid.member`` can train or build
GRID_METHODS = frozenset(TRAINED_METHODS) | frozenset(OPTIM_METHODS)
# grid, domain and member names become folder names and MLflow filter values: no path separators,
# no '..', no quotes, no leading dot
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*\Z")
# the shape of each grid-file key (a missing or null key is allowed everywhere)
_SHAPES = {"grid": str, "description": str, "domain": str, "config": str, "method_config": str,
           "default_profile": str, "switches": dict, "method_defaults": dict, "members": list, "overrides": dict,
           "evaluate": dict, "profiles": dict, "exclude": list, "prepare": list}
_PROFILE_SHAPES = {"description": str, "overrides": dict, "methods": dict, "members": dict, "add_members": list,
                   "evaluate": dict, "exclude": list, "jobs": int}
_MEMBER_SHAPES = {"method": str, "name": str, "overrides": dict, "evaluate": dict, "depends_on": (str, list)}
_EVAL_SHAPES = {"metrics": list, "n_images": int, "batch_size": int, "qualitative": dict, "options": dict,
                "data": str}
_TYPE_WORDS = {str: "a string", dict: "a mapping", list: "a list", int: "an integer", (str, list): "a name or a list"}


class GridError(ValueError):
    """A grid file or a grid call is invalid (the message says what and where)."""


# ================================================================================================
# grid files
# ================================================================================================
@dataclass
class Member:
    name: str
    method: str
    order: int
    options: dict[str, Any] = field(default_factory=dict)      # switches as the member sets them
    overrides: dict[str, Any] = field(default_factory=dict)    # dotted config key -> value (resolved)
    depends_on: list[str] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)      # domain config, method config (merge order)
    evaluate: dict[str, Any] = field(default_factory=dict)     # merged over the grid's evaluation spec


@dataclass
class GridSpec:
    name: str
    domain: str
    profile: str
    path: str
    config: str | None                  # the domain's experiment config (TrainConfig deltas)
    members: list[Member]
    evaluate: dict[str, Any]
    prepare: list[dict[str, Any]] = field(default_factory=list)   # commands that create missing inputs
    jobs: int = 1                       # members in flight by default (the profile's `jobs`)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise GridError(f"grid {self.name!r} has no member {name!r}; members: {[m.name for m in self.members]}")


def _read_yaml(path: Path) -> dict:
    from e4e.config import ConfigError, read_yaml

    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        data = read_yaml(path) or {}
    except ConfigError as exc:   # file:line:column, duplicate keys included
        raise GridError(str(exc)) from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: a grid file is a mapping, got {type(data).__name__}")
    _check_keys(data, GRID_KEYS, str(path))
    return data


def _check_shapes(d: Mapping, shapes: Mapping[str, Any], where: str) -> None:
    """Each key of ``d`` that ``shapes`` names holds the type it says (or null)."""
    for key, typ in shapes.items():
        v = d.get(key)
        if v is None:
            continue
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if not ok:
            raise GridError(f"{where}: '{key}' must be {_TYPE_WORDS[typ]}, got {type(v).__name__} {v!r:.60}")


def _mapping(v: Any, where: str) -> dict:
    """``v`` (null: empty) as a mapping, else a GridError."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise GridError(f"{where} must be a mapping, got {type(v).__name__} {v!r:.60}")
    return v


def check_name(kind: str, value: Any, where: str) -> str:
    """A grid, domain or member name: it names folders (``<runs>/<domain>/<grid>/<member>-<hash>``) and
    MLflow filter values, so letters, digits and ``_ . = + -`` only, not starting with a dot, no ``..``."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise GridError(f"{where}: {kind} name {value!r} is not allowed: use letters, digits and _ . = + - "
                        f"(no path separators, quotes, spaces or '..'; it names a folder and an MLflow tag)")
    return value


def check_metric_names(names: Any, where: str) -> None:
    """Every evaluation metric name is one the registry knows (``metrics.registry.metric_spec``)."""
    from metrics.registry import list_metrics, metric_spec

    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise GridError(f"{where}: 'metrics' must be a list of metric names, got {names!r:.80}")
    for n in names:
        try:
            metric_spec(n.strip())
        except KeyError:
            import difflib

            close = difflib.get_close_matches(n, list_metrics(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GridError(f"{where}: unknown metric {n!r}{hint} (python -m experiments.evaluate --list)") from None


def _check_evaluate(ev: Mapping, where: str) -> None:
    _check_keys(ev, EVAL_KEYS, where)
    _check_shapes(ev, _EVAL_SHAPES, where)
    for key in ("n_images", "batch_size"):
        if ev.get(key) is not None and ev[key] < 1:
            raise GridError(f"{where}: '{key}' must be >= 1, got {ev[key]}")
    check_metric_names(ev.get("metrics"), where)


def _check_keys(d: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _merge(base: Any, delta: Any) -> Any:
    """Recursive dict merge; anything else in ``delta`` replaces ``base``."""
    if isinstance(base, dict) and isinstance(delta, dict):
        out = dict(base)
        for k, v in delta.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(delta)


def _resolve_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a grid file and everything it ``extends`` (merged, the file's own keys last)."""
    path = path.resolve()
    if path in seen:
        raise GridError(f"circular 'extends': {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _resolve_file((path.parent / parent), seen + (path,))
    return _merge(base, data)


def domain_variant(path: Path, domain: str) -> Path | None:
    """``<dir>/<stem>_<domain>.yaml`` next to a base grid, if it exists."""
    cand = path.parent / f"{path.stem}_{domain}.yaml"
    return cand if cand.exists() else None


def _domains_for(path: Path) -> list[str]:
    return sorted(p.stem[len(path.stem) + 1:] for p in path.parent.glob(f"{path.stem}_*.yaml"))


def member_name(method: str, options: Mapping[str, Any], switches: Mapping[str, Mapping],
                defaults: Mapping[str, Any] | None = None) -> str:
    """``method`` + one suffix per switch set to a non-default value, in the switches' order:
    ``no_<label>`` (False), ``<label>`` (True), ``<label>=<value>`` (anything else). ``defaults``
    (the method's switch defaults) take precedence over each switch's own default."""
    parts = [method]
    defaults = defaults or {}
    for opt, sw in switches.items():
        if opt not in options or options[opt] == defaults.get(opt, sw.get("default")):
            continue
        v, label = options[opt], sw.get("label", opt)
        parts.append({True: label, False: f"no_{label}"}.get(v, f"{label}={v}") if isinstance(v, bool)
                     else f"{label}={v}")
    return "-".join(parts)


def load_grid(path: str | Path, domain: str | None = None, profile: str | None = None,
              extra_overrides: Mapping[str, Any] | None = None, only: Iterable[str] | None = None,
              eval_overrides: Mapping[str, Any] | None = None) -> GridSpec:
    """Resolve a grid file for one domain and profile into a ``GridSpec``.

    ``path`` is a base grid (its ``<stem>_<domain>.yaml`` variant is merged in) or a variant file.
    ``extra_overrides`` (dotted keys, e.g. from ``--set``) apply to every member last; ``only``
    restricts the members (their dependencies are kept). ``eval_overrides`` (``--eval``, e.g.
    ``{"n_images": 200, "options.edit_n_ref": 128}``) apply to the evaluation spec last.
    """
    path = Path(path)
    if domain is not None:   # it names the variant file, the MLflow experiment and a folder
        check_name("domain", domain, "--domain")
    data = _resolve_file(path)
    variant = domain_variant(path, domain) if domain else None
    if variant is not None:
        data = _merge(data, {k: v for k, v in _resolve_file(variant).items() if k != "extends"})
    dom = data.get("domain")
    if domain and dom and dom != domain:
        raise GridError(f"{path} is for domain {dom!r}, not {domain!r}")
    domain = domain or dom
    if not domain:
        raise GridError(f"{path}: no domain; pass --domain (variants: {_domains_for(path) or 'none'})")
    if not dom and variant is None:
        raise GridError(f"no variant of {path.name} for domain {domain!r} (expected "
                        f"{path.parent / f'{path.stem}_{domain}.yaml'}; known: {_domains_for(path) or 'none'})")
    _check_shapes(data, _SHAPES, str(path))
    name = check_name("grid", data.get("grid") or path.stem, str(path))
    check_name("domain", domain, str(path))
    profiles = data.get("profiles") or {}
    profile = profile or data.get("default_profile") or "demo"
    if profile not in profiles:
        raise GridError(f"grid {name!r} (domain {domain}) has no profile {profile!r}; profiles: {sorted(profiles)}")
    prof = _mapping(profiles[profile], f"{name}: profile {profile}")
    _check_keys(prof, PROFILE_KEYS, f"{name}: profile {profile}")
    _check_shapes(prof, _PROFILE_SHAPES, f"{name}: profile {profile}")
    if prof.get("jobs") is not None and prof["jobs"] < 1:
        raise GridError(f"{name}: profile {profile}: 'jobs' must be >= 1, got {prof['jobs']}")

    switches = data.get("switches") or {}
    for opt, sw in switches.items():
        sw = _mapping(sw, f"{name}: switch {opt}")
        _check_keys(sw, SWITCH_KEYS, f"{name}: switch {opt}")
        if "key" not in sw:
            raise GridError(f"{name}: switch {opt!r} needs 'key' (the dotted config key it sets)")
    common = {**_flatten(data.get("overrides") or {}), **_flatten(prof.get("overrides") or {})}
    per_method = prof.get("methods") or {}
    per_member = prof.get("members") or {}
    for where, table in (("methods", per_method), ("members", per_member)):
        for k, v in table.items():
            _mapping(v, f"{name}: profile {profile}: {where}.{k}")
    excluded = set(map(str, data.get("exclude") or [])) | set(map(str, prof.get("exclude") or []))

    config = data.get("config")
    if config:
        config = str(_repo_path(config, path))
        if not Path(config).exists():
            raise GridError(f"{name}: domain config {config} not found")
    method_defaults = data.get("method_defaults") or {}
    for meth, d in method_defaults.items():
        _check_keys(_mapping(d, f"{name}: method_defaults.{meth}"), set(switches), f"{name}: method_defaults.{meth}")
    members: list[Member] = []
    # the grid's members, then those the profile adds (e.g. a short-schedule reference run)
    for i, raw in enumerate(list(data.get("members") or []) + list(prof.get("add_members") or [])):
        if not isinstance(raw, (str, dict)):
            raise GridError(f"{name}: member #{i} must be a method name or a mapping, got "
                            f"{type(raw).__name__} {raw!r:.60}")
        raw = {"method": raw} if isinstance(raw, str) else dict(raw)
        opts = {k: raw.pop(k) for k in list(raw) if k in switches}
        _check_keys(raw, MEMBER_KEYS, f"{name}: member #{i} ({raw.get('method')})")
        _check_shapes(raw, _MEMBER_SHAPES, f"{name}: member #{i}")
        if "method" not in raw:
            raise GridError(f"{name}: member #{i} has no method")
        method = raw["method"]
        if method not in GRID_METHODS:
            import difflib

            close = difflib.get_close_matches(method, sorted(GRID_METHODS), n=1)
            raise GridError(f"{name}: member #{i}: unknown method {method!r}"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" (known: {', '.join(sorted(GRID_METHODS))})")
        mdefaults = method_defaults.get(method) or {}
        mname = raw.get("name") or member_name(method, opts, switches, mdefaults)
        check_name("member", mname, f"{name}: member #{i} ({method})")
        opts = {**mdefaults, **opts}
        if mname in excluded:
            continue
        overrides = dict(common)
        overrides.update(_flatten(per_method.get(method) or {}))
        overrides.update({switches[o]["key"]: v for o, v in opts.items()})
        overrides.update(_flatten(raw.get("overrides") or {}))
        overrides.update(_flatten(per_member.get(mname) or {}))
        overrides.update(dict(extra_overrides or {}))
        deps = raw.get("depends_on") or []
        if isinstance(deps, list) and not all(isinstance(d, str) for d in deps):
            raise GridError(f"{name}: member {mname}: 'depends_on' must name members, got {deps!r:.80}")
        files = [config] if config else []
        if data.get("method_config"):
            mc = _repo_path(str(data["method_config"]).format(method=method), path)
            files += [str(mc)] if mc.exists() else []
        m_eval = raw.get("evaluate") or {}
        _check_evaluate(m_eval, f"{name}: member {mname} evaluate")
        members.append(Member(mname, method, i, opts, overrides, [deps] if isinstance(deps, str) else list(deps),
                              files, m_eval))
    names = [m.name for m in members]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"{name}: duplicate member names {dup}; give them distinct options or a 'name'")
    for m in members:
        missing = [d for d in m.depends_on if d not in names]
        if missing:
            raise GridError(f"{name}: member {m.name!r} depends on {missing}, not in the grid (members: {names})")
    if only:
        wanted = set(only)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise GridError(f"--members: unknown {unknown}; members: {names}")
        closure = _with_dependencies(members, wanted)
        members = [m for m in members if m.name in closure]
    evaluate = _merge(data.get("evaluate") or {}, prof.get("evaluate") or {})
    evaluate = _merge(evaluate, _nest(eval_overrides or {}))  # --eval: dotted keys, applied last
    _check_evaluate(_mapping(evaluate, f"{name}: evaluate"), f"{name}: evaluate")
    for m in members:   # a member's evaluation = the grid's, merged with its own
        if m.evaluate:
            _check_evaluate(_merge(evaluate, m.evaluate), f"{name}: member {m.name} evaluate")
    prepare = list(data.get("prepare") or [])
    for i, step in enumerate(prepare):
        step = _mapping(step, f"{name}: prepare #{i}")
        _check_keys(step, PREPARE_KEYS, f"{name}: prepare #{i}")
        if not {"command", "creates"} <= set(step):
            raise GridError(f"{name}: prepare #{i} needs 'command' and 'creates'")
        _check_shapes(step, {"command": str, "creates": str, "description": str}, f"{name}: prepare #{i}")
    jobs = int(prof.get("jobs") or 1)
    return GridSpec(name, domain, profile, str(path), config, members, evaluate, prepare, jobs)


def _repo_path(p: str, near: Path) -> Path:
    """Paths in grid files are relative to the repository root (else to the grid file)."""
    p = Path(p)
    if p.is_absolute():
        return p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() or not (near.parent / p).exists() else near.parent / p


def _with_dependencies(members: list[Member], wanted: set[str]) -> set[str]:
    by = {m.name: m for m in members}
    out, todo = set(), list(wanted)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(by[n].depends_on)
    return out


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_dotlist(items: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=true"]`` -> ``{"a.b": 1, "c": True}`` (``e4e.config.parse_dotlist``, as a GridError)."""
    from e4e import config as C

    try:
        return C.parse_dotlist(items)
    except C.ConfigError as e:
        raise GridError(str(e)) from None


# ================================================================================================
# the project's pieces this runner drives (imported lazily: no side effects at import)
# ================================================================================================


def resolve_config(grid: GridSpec, member: Member, out_dir: Path | None = None):
    """The member's typed config: domain config file <- member overrides (<- out_dir)."""
    from e4e import config as C

    overrides = dict(member.overrides)
    overrides["model.method"] = member.method
    if out_dir is not None:
        overrides["out_dir"] = str(out_dir)
    return C.build_config(list(member.config_files), overrides=_nest(overrides))


def check_members(grid: GridSpec) -> None:
    """Every member's config resolves, and every trained member trains at least one step: else a
    ``GridError`` naming the member, before any member starts (nothing written)."""
    for m in grid.members:
        try:
            cfg = resolve_config(grid, m)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise GridError(f"{grid.name}: member {m.name}: {exc}") from None
        if m.method in TRAINED_METHODS and not (isinstance(cfg.max_steps, int) and cfg.max_steps >= 1):
            raise GridError(f"{grid.name}: member {m.name}: max_steps must be >= 1 (it trains), got {cfg.max_steps}")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GridError(f"override {key!r} conflicts with a scalar override of {p!r}")
        node[leaf] = v
    return out


def config_hash(cfg) -> str:
    from e4e import config as C

    return C.config_hash(cfg)


# what each method is, in words (the member runs' descriptions in the MLflow UI): the method table's
METHOD_WORDS = {name: m.words for name, m in METHODS.items()}


SWITCH_WORDS = {"delta_reg": "delta-regularisation", "adversarial": "latent discriminator",
                "progressive": "progressive training"}
