"""flagstore for Python pipelines: the prototype's ``FlagManager`` API, in process, on
flagstore's persistent store.

Migrating is an import line::

    from flagstore import Flag, FlagManager

    flags = FlagManager([Flag("ingest"), Flag("enrich", rollout_pct=50, requires=["ingest"])],
                        db="flags.db")
    if flags.is_enabled("enrich", tenant):
        ...

Every decision is recorded in the store's hash-chained audit trail and stored per the flag's
sticky policy, durably, before the call returns; the CLI (``flagstore``) and ``serve`` read
and write the same store. Without ``db`` the store lives in memory, as the prototype's did.
"""

from __future__ import annotations

import getpass
import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from types import TracebackType
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

from flagstore._flagstore import Store as _Store
from flagstore._flagstore import StoreError, __version__

__all__ = ["Flag", "FlagManager", "StoreError", "flags_from_config", "__version__"]

_FIELDS = ("name", "enabled", "rollout_pct", "requires", "sticky")


@dataclass
class Flag:
    """A flag as the prototype defined it. Checked (name, percentage, policy, requirements)
    when a manager takes it, in the CLI's words."""

    name: str
    enabled: bool = True
    rollout_pct: float = 100.0
    requires: List[str] = field(default_factory=list)
    sticky: str = "on_only"

    def _document(self, index: int) -> Dict[str, Any]:
        """The flag as an entry of a flags file, for the store to check as `import` does. What
        JSON cannot carry, a NaN or infinite rollout, is refused here in the store's words;
        anything else wrong (``requires=None`` or a string, a wrong type) goes to the store
        as given, which names the flag and field. A tuple of requirements is the list it is."""
        where = f"flags[{index}] ({self.name!r})"
        pct = self.rollout_pct
        if isinstance(pct, float) and not math.isfinite(pct):
            raise ValueError(f"{where}: rollout_pct must be a number from 0 to 100, got {pct}")
        requires: Any = self.requires
        if isinstance(requires, (list, tuple)):
            requires = list(requires)
        return {
            "name": self.name,
            "enabled": self.enabled,
            "rollout_pct": pct,
            "requires": requires,
            "sticky": self.sticky,
        }


def _documented(flags: Iterable[Flag]) -> Tuple[List[Flag], str]:
    """``flags`` as a list, and as a flags file's JSON for the store to check, after the
    checks JSON cannot make: an iterable of ``Flag``, not a string or a mapping (which
    iterate as characters and keys)."""
    if isinstance(flags, (str, bytes, Mapping)) or not isinstance(flags, Iterable):
        raise TypeError(f"flags must be a list of Flag objects, got {type(flags).__name__}")
    given = list(flags)
    entries = []
    for index, flag in enumerate(given):
        if not isinstance(flag, Flag):
            raise TypeError(f"flags[{index}] must be a Flag, got {type(flag).__name__}")
        entries.append(flag._document(index))
    return given, json.dumps({"flags": entries})


def _iterable_of_str(value: Iterable[str], what: str) -> Iterable[str]:
    """``value`` if it is an iterable of strings that is not itself a string: a lone string
    would be taken one character at a time."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be an iterable of str, got {type(value).__name__}")
    return value


def flags_from_config(raw: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> List[Flag]:
    """Flags from a parsed flags file: ``{"flags": [...]}`` (its ``context_key``, if any, is
    ``run``'s business) or the list itself. An unknown field is refused, naming it: a
    misspelt ``"rollout"`` must not silently mean 100%."""
    items = raw.get("flags", []) if isinstance(raw, Mapping) else raw
    if not isinstance(items, list):
        raise ValueError(f"flags: must be a list of flag objects, got {type(items).__name__}")
    flags = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"flags[{index}]: expected an object, got {item!r}")
        unknown = sorted(set(item) - set(_FIELDS))
        if unknown:
            raise ValueError(
                f"flags[{index}] ({item.get('name')!r}): unknown field {unknown[0]!r}; "
                f"a flag has {', '.join(_FIELDS)}"
            )
        if "name" not in item:
            raise ValueError(f"flags[{index}]: a flag needs a name")
        flags.append(Flag(**item))
    return flags


def _default_actor() -> str:
    return os.environ.get("FLAGSTORE_ACTOR") or getpass.getuser()


class FlagManager:
    """The prototype's manager, on a persistent store.

    ``db`` is an SQLite path or a ``postgres://`` URL; without it, a new store in memory.
    Given ``flags``, it creates those the store lacks (one audited change); where the store
    defines a flag otherwise, the store's definition wins and a ``UserWarning`` names the
    flag and fields, since the store is the audited source of truth (``apply`` makes the
    given flags the store's). A ``db`` that does not exist, with no flags to create it from,
    is a ``StoreError``. ``close()`` it, or use it in a ``with`` block.

    Given ``signing_key`` (a key made by ``flagstore keys generate``) and ``heads`` (a heads
    file, somewhere the store's owner cannot rewrite), the manager publishes a signed tree
    head of the audit log every second while it records, and a last one at ``close()``,
    which raises ``StoreError`` if that head could not be published.
    """

    def __init__(
        self,
        flags: Optional[Iterable[Flag]] = None,
        db: Optional[Union[str, "os.PathLike[str]"]] = None,
        actor: Optional[str] = None,
        signing_key: Optional[Union[str, "os.PathLike[str]"]] = None,
        heads: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        given, document = _documented(flags) if flags is not None else ([], "")
        self.actor = actor or _default_actor()
        location = os.fspath(db) if db is not None else None
        self._store = _Store(
            location,
            self.actor,
            flags is not None,
            os.fspath(signing_key) if signing_key is not None else None,
            os.fspath(heads) if heads is not None else None,
        )
        self._given: Dict[str, Flag] = {}
        self._order: List[str] = []
        self._remember(given)
        self._audit_log: List[Dict[str, Any]] = []
        if given:
            for name, fields in self._store.adopt(document):
                said = " and ".join(f"{f} {mine}" for f, mine, _ in fields)
                stored = " and ".join(theirs for _, _, theirs in fields)
                warnings.warn(
                    f"flag {name!r}: given {said}, the store has {stored}; the store's "
                    "definition is used",
                    UserWarning,
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        return f"FlagManager(db={self._store.path()!r}, actor={self.actor!r})"

    def __enter__(self) -> "FlagManager":
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the store; a later call raises ``ValueError``. Closing twice does nothing."""
        self._store.close()

    @property
    def audit_log(self) -> List[Dict[str, Any]]:
        """The ``{flag, result, reason}`` entries the prototype would have appended for this
        manager's calls: a copy, as the prototype's property gave, so changing it changes
        nothing here."""
        return [dict(entry) for entry in self._audit_log]

    def _remember(self, flags: Iterable[Flag]) -> None:
        """Keeps the given definitions (their rollouts as given, for the trail's wording) and
        their order, a new name at the end."""
        for flag in flags:
            self._given[flag.name] = flag
            if flag.name not in self._order:
                self._order.append(flag.name)
        self._given_changed()

    def _given_changed(self) -> None:
        """Tells the store how each rollout was given, for the trail's ``rollout P%`` as the
        prototype wrote it (``50``, ``50.0``, ``12.5``)."""
        given = self._given.items()
        self._store.given_rollouts({name: (float(f.rollout_pct), str(f.rollout_pct)) for name, f in given})

    def _names(self) -> List[str]:
        """Every flag: those given, in their order, then the rest of the store's."""
        stored = [name for name, *_ in self._store.flags()]
        known = set(self._order)
        return self._order + [name for name in stored if name not in known]

    def register(self, flag: Flag) -> None:
        """Adds or redefines a flag: an audited change, as ``flagstore flag`` makes."""
        self.apply([flag])

    def apply(self, flags: Iterable[Flag], replace: bool = False) -> None:
        """Makes ``flags`` the store's definitions in one audited change, as ``flagstore
        import`` does: each created or redefined (a new one at the end). With
        ``replace=True``, as ``import --replace``: the store then holds exactly these flags,
        in this order, and the others are deleted. For a script whose file is the truth."""
        given, document = _documented(flags)
        self._store.apply(document, replace)
        if replace:
            self._given, self._order = {}, []
        self._remember(given)

    def delete(self, name: str) -> None:
        """Deletes flag ``name`` and its assignments, audited, as ``flagstore flag delete``
        does; refused, naming them, while other flags require it."""
        self._store.delete(name)
        self._given.pop(name, None)
        self._given_changed()
        if name in self._order:
            self._order.remove(name)

    def is_enabled(self, name: str, context_key: str = "") -> bool:
        """Whether ``name`` is on for ``context_key``, recorded and stored before it returns."""
        return self._store.evaluate([name], context_key, self._audit_log)[0]

    def evaluate_all(self, context_key: str = "") -> Dict[str, bool]:
        """Every flag for ``context_key``, in the prototype's order (the flags given, then the
        store's others, read in the same transaction), as one decision record."""
        return self._store.evaluate_all(self._order, context_key, self._audit_log)

    def evaluate_many(
        self, context_keys: Iterable[str], names: Optional[Iterable[str]] = None
    ) -> Iterator[Dict[str, bool]]:
        """The batch path: each key's answers for ``names`` (default: every flag), as
        ``flagstore eval --contexts-file`` decides them, a transaction per chunk of keys.
        Lazy: keys are read from ``context_keys`` as chunks are evaluated and each chunk's
        answers are yielded once it has committed, so a generator of millions of keys runs in
        bounded memory (``list(...)`` for a list). Not added to ``audit_log``. A string given
        for either argument is a ``TypeError`` at the call, not at the first answer."""
        chosen = list(_iterable_of_str(names, "names")) if names is not None else self._names()
        keys = iter(_iterable_of_str(context_keys, "context_keys"))
        return self._evaluated_chunks(chosen, keys)

    def _evaluated_chunks(self, chosen: List[str], keys: Iterator[str]) -> Iterator[Dict[str, bool]]:
        size = self._store.batch_keys(len(chosen))
        while True:
            chunk = list(itertools.islice(keys, size))
            if not chunk:
                return
            for answers in self._store.evaluate_chunk(chosen, chunk):
                yield dict(zip(chosen, answers))

    def stats(self) -> Dict[str, int]:
        """The prototype's counts: flags, and how many are enabled and disabled (their
        setting in the store, not their decisions)."""
        flags = self._store.flags()
        enabled = sum(1 for _, on, *_ in flags if on)
        return {"total": len(flags), "enabled": enabled, "disabled": len(flags) - enabled}

    def explain(self, name: str, context_key: str, at: Optional[str] = None) -> Dict[str, Any]:
        """``flagstore explain --json``: every step, now or as of ``at`` (RFC 3339 or a date),
        writing nothing."""
        explained: Dict[str, Any] = json.loads(self._store.explain(name, context_key, at))
        return explained

    def audit(
        self,
        flag: Optional[str] = None,
        context_key: Optional[str] = None,
        since: Optional[str] = None,
        limit: int = 100,
    ) -> List[Dict[str, Any]]:
        """``flagstore audit --format json``: rows newest first (``limit=0`` for all)."""
        return [json.loads(row) for row in self._store.audit(flag, context_key, since, limit)]

    def verify(self) -> Dict[str, Any]:
        """``flagstore audit verify``: the whole hash chain re-hashed; raises ``StoreError``
        naming the first row that does not verify."""
        rows, head = self._store.verify()
        return {"rows": rows, "head": head}
