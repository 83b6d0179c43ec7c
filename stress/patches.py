"""Your patch as a variant: a Python file that changes the model the way a kernel patch
changes the kernel.

A patch file names the built-in variant it applies to, says in one line what it does,
and subclasses the model classes whose functions it changes, overriding those functions
under their kernel names::

    \"\"\"Remove a private leaf without TDH.MEM.TRACK (a planted mistake).\"\"\"
    from core.tdx import KvmTdx as Base

    BASE = "hugepage-rfc"
    SUMMARY = "tdx_sept_remove_private_spte() skips tdx_track()"
    FINDS = ("TDX_BUG_ON", "tdx_sept_remove_private_spte")   # optional: a planted bug

    class KvmTdx(Base):
        def tdx_track(self) -> None:
            pass

``--variant PATH.py`` works wherever a variant name does, and so does
``--variant module:Name`` for a patch in an importable module: ``Name`` is a class (or
any namespace) holding the same ``BASE``, ``SUMMARY``, optional ``FINDS``, and the
override classes as attributes.  A package ships patches under the entry-point group
``tdx_stress.variants`` (entry-point name -> ``module:Name``); their names work too.
The patchable classes are ``core.kvm.Kvm``, ``core.tdp_mmu.TdpMmu``, ``core.tdx.KvmTdx`` and
``core.tdx_module.TdxModule``; ``super()`` calls the base's function.  A patch that
cannot be right is refused with one sentence: a missing file, a syntax error (with its
line), an unknown base, a function the base class does not have (a typo must not add a
function nobody calls; a new helper's name starts with ``patch_``), or a signature that
differs from the base's.  Repros record the patch's hash and refuse to replay against an
edited patch.
"""
from __future__ import annotations

import hashlib
import inspect
import types
from dataclasses import replace
from pathlib import Path

from core.kvm import Kvm
from core.tdp_mmu import TdpMmu
from core.tdx import KvmTdx
from core.tdx_module import TdxModule
from core.variants import VARIANTS, UnknownVariant, Variant

PATCHABLE: tuple[type, ...] = (Kvm, TdpMmu, KvmTdx, TdxModule)
_CACHE: dict[tuple[str, str], Variant] = {}


ENTRY_POINTS = "tdx_stress.variants"


def is_patch_name(name: str) -> bool:
    return name.endswith(".py")


def installed_patches() -> dict[str, str]:
    """Entry-point name -> ``module:Name`` of the patches installed packages ship."""
    import importlib.metadata
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def patch_hash(source: bytes) -> str:
    return hashlib.blake2b(source, digest_size=8).hexdigest()


def load_patch(name: str) -> Variant | None:
    """The variant a patch file (or ``module:Name``, or an installed entry point)
    defines, or None if ``name`` is none of those."""
    if not is_patch_name(name):
        target = installed_patches().get(name, name)
        if ":" in target:
            return _load_object(name, target)
        return None
    path = Path(name)
    if not path.is_file():
        raise UnknownVariant(f"no patch file {name}")
    source = path.read_bytes()
    key = (str(path.resolve()), patch_hash(source))
    if key in _CACHE:
        return _CACHE[key]
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise UnknownVariant(f"patch {name}: syntax error at line {e.lineno}: {e.msg}") \
            from None
    module = types.ModuleType(f"tdx_stress_patch_{key[1]}")
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)
    except Exception as e:     # the patch's own code failed: say so, in one sentence
        raise UnknownVariant(f"patch {name} failed to load: {type(e).__name__}: {e}") \
            from None
    v = _variant_of(name, module, key[1])
    _CACHE[key] = v
    return v


def _load_object(name: str, target: str) -> Variant:
    """``module:Name``: import the module, take ``Name``; the hash covers the module's
    source file."""
    import importlib
    mod_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:
        raise UnknownVariant(f"patch {name}: cannot import {mod_name}: "
                             f"{type(e).__name__}: {e}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise UnknownVariant(f"patch {name}: module {mod_name} has no {attr}")
    src = getattr(module, "__file__", None)
    digest = patch_hash(Path(src).read_bytes()) if src else ""
    key = (target, digest)
    if key not in _CACHE:
        ns = {k: getattr(obj, k) for k in dir(obj) if not k.startswith("__")}
        _CACHE[key] = _variant_of(name, module, digest, ns=ns, owner=None)
    return _CACHE[key]


def _variant_of(name: str, module: types.ModuleType, digest: str,
                ns: dict | None = None, owner: str | None = "module") -> Variant:
    """The Variant of a patch's namespace ``ns`` (a file's module globals by default;
    their override classes must be defined there, not imported)."""
    ns = module.__dict__ if ns is None else ns
    base = ns.get("BASE")
    if not isinstance(base, str):
        raise UnknownVariant(f"patch {name} names no BASE variant (BASE = \"hugepage-rfc\", "
                             f"say)")
    if base not in VARIANTS:
        raise UnknownVariant(f"patch {name}: unknown base variant {base!r}; valid bases: "
                             f"{', '.join(VARIANTS)}")
    summary = ns.get("SUMMARY") or (module.__doc__ or "").strip().splitlines()[:1]
    summary = summary if isinstance(summary, str) else (summary[0] if summary else "")
    if not summary:
        raise UnknownVariant(f"patch {name} has no SUMMARY (one line: what it changes)")
    finds = ns.get("FINDS")
    if finds is not None:
        if isinstance(finds, str):
            finds = (finds, None)
        if not (isinstance(finds, tuple) and len(finds) == 2 and isinstance(finds[0], str)
                and (finds[1] is None or isinstance(finds[1], str))):
            raise UnknownVariant(f"patch {name}: FINDS must be a finding kind, or (kind, "
                                 f"where)")
    overrides: list[type] = []
    for obj in ns.values():
        if not isinstance(obj, type) or (owner and obj.__module__ != module.__name__):
            continue
        bases = [c for c in PATCHABLE if issubclass(obj, c)]
        if not bases:
            continue
        _check_overrides(name, obj, bases[0], VARIANTS[base].compose(bases[0]), base)
        if any(issubclass(o, bases[0]) for o in overrides):
            raise UnknownVariant(f"patch {name} overrides {bases[0].__name__} twice")
        overrides.append(obj)
    if not overrides:
        raise UnknownVariant(f"patch {name} changes nothing: it subclasses none of "
                             f"{', '.join(c.__name__ for c in PATCHABLE)}")
    return replace(VARIANTS[base], name=name, summary=summary, base=base,
                   overrides=tuple(overrides), finds=finds, patch_hash=digest)


def _check_overrides(name: str, cls: type, model: type, composed: type, base: str) -> None:
    """Every function the patch class defines overrides one of the class it patches (the
    model class ``model`` as the base variant ``base`` composes it, built-in patches
    included), with the same signature; helpers of the patch's own are named
    ``patch_*``."""
    of = "" if composed is model else f" of {base}"
    for attr, fn in vars(cls).items():
        if attr.startswith("__") or not callable(fn) or attr.startswith("patch_"):
            continue
        old = getattr(composed, attr, None)
        if old is None or not callable(old):
            raise UnknownVariant(f"patch {name}: {cls.__name__}.{attr} overrides nothing in "
                                 f"{model.__name__}{of} (a typo? a new helper's name starts with "
                                 f"patch_)")
        new_sig, old_sig = inspect.signature(fn), inspect.signature(old)
        if [(p.name, p.kind, p.default) for p in new_sig.parameters.values()] != \
                [(p.name, p.kind, p.default) for p in old_sig.parameters.values()]:
            raise UnknownVariant(f"patch {name}: {cls.__name__}.{attr}{new_sig} does not match "
                                 f"{model.__name__}.{attr}{old_sig}{of}")


def patch_source_hash(name: str) -> str:
    """The hash of a patch's source as it is now ("" for a built-in variant)."""
    if not is_patch_name(name):
        try:
            v = load_patch(name)
        except UnknownVariant:
            return ""
        return v.patch_hash if v is not None else ""
    path = Path(name)
    return patch_hash(path.read_bytes()) if path.is_file() else ""

