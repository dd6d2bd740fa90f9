"""Grid files: reading, merging and checking a grid YAML (``GridSpec``, ``Member``), member names,
and each member's resolved trainer config and config hash.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from e4e.inverters import METHODS

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
    name = data.get("grid") or path.stem
    profiles = data.get("profiles") or {}
    profile = profile or data.get("default_profile") or "demo"
    if profile not in profiles:
        raise GridError(f"grid {name!r} (domain {domain}) has no profile {profile!r}; profiles: {sorted(profiles)}")
    prof = profiles[profile] or {}
    _check_keys(prof, PROFILE_KEYS, f"{name}: profile {profile}")

    switches = data.get("switches") or {}
    for opt, sw in switches.items():
        _check_keys(sw, SWITCH_KEYS, f"{name}: switch {opt}")
        if "key" not in sw:
            raise GridError(f"{name}: switch {opt!r} needs 'key' (the dotted config key it sets)")
    common = {**_flatten(data.get("overrides") or {}), **_flatten(prof.get("overrides") or {})}
    per_method = prof.get("methods") or {}
    per_member = prof.get("members") or {}
    excluded = set(data.get("exclude") or []) | set(prof.get("exclude") or [])

    config = data.get("config")
    if config:
        config = str(_repo_path(config, path))
        if not Path(config).exists():
            raise GridError(f"{name}: domain config {config} not found")
    method_defaults = data.get("method_defaults") or {}
    for meth, d in method_defaults.items():
        _check_keys(d or {}, set(switches), f"{name}: method_defaults.{meth}")
    members: list[Member] = []
    # the grid's members, then those the profile adds (e.g. a short-schedule reference run)
    for i, raw in enumerate(list(data.get("members") or []) + list(prof.get("add_members") or [])):
        raw = {"method": raw} if isinstance(raw, str) else dict(raw)
        opts = {k: raw.pop(k) for k in list(raw) if k in switches}
        _check_keys(raw, MEMBER_KEYS, f"{name}: member #{i} ({raw.get('method')})")
        if "method" not in raw:
            raise GridError(f"{name}: member #{i} has no method")
        method = raw["method"]
        mdefaults = method_defaults.get(method) or {}
        mname = raw.get("name") or member_name(method, opts, switches, mdefaults)
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
        files = [config] if config else []
        if data.get("method_config"):
            mc = _repo_path(str(data["method_config"]).format(method=method), path)
            files += [str(mc)] if mc.exists() else []
        m_eval = raw.get("evaluate") or {}
        _check_keys(m_eval, EVAL_KEYS, f"{name}: member {mname} evaluate")
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
    _check_keys(evaluate, EVAL_KEYS, f"{name}: evaluate")
    prepare = list(data.get("prepare") or [])
    for i, step in enumerate(prepare):
        _check_keys(step, PREPARE_KEYS, f"{name}: prepare #{i}")
        if not {"command", "creates"} <= set(step):
            raise GridError(f"{name}: prepare #{i} needs 'command' and 'creates'")
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
