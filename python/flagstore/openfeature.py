"""An in-process OpenFeature provider over a flagstore store (``openfeature-sdk`` 0.10 or
later, from PyPI): boolean flags resolve as ``flagstore serve`` answers them over OFREP
(value, variant ``on`` or ``off``, reason ``SPLIT``, ``DISABLED``, ``TARGETING_MATCH`` or
``UNKNOWN``, and flagstore's own source and reason as metadata), each decision recorded and
stored before it returns. Set it with ``set_provider_and_wait``: ``set_provider`` returns
before the provider is ready.

    from openfeature import api
    from flagstore.openfeature import FlagstoreProvider

    api.set_provider_and_wait(FlagstoreProvider(db="flagstore.db", actor="billing-worker"))
    api.get_client().get_boolean_value("enrich", False, EvaluationContext("tenant:acme"))

An unknown flag resolves to the caller's default with ``FLAG_NOT_FOUND`` (and is not
recorded, as serve does not record it); a string, number or object lookup to the default
with ``TYPE_MISMATCH``: flagstore's flags are boolean.
"""

from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Union

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.provider import AbstractProvider, Metadata

from flagstore import _default_actor
from flagstore._flagstore import Store as _Store

__all__ = ["FlagstoreProvider"]


class FlagstoreProvider(AbstractProvider):
    def __init__(self, db: Union[str, "os.PathLike[str]"], actor: Optional[str] = None) -> None:
        self._store = _Store(os.fspath(db), actor or _default_actor(), False)

    def get_metadata(self) -> Metadata:
        return Metadata(name="flagstore")

    def get_provider_hooks(self) -> List[Any]:
        return []

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[bool]:
        key = evaluation_context.targeting_key if evaluation_context else None
        if not key:
            return FlagResolutionDetails(
                value=default_value,
                reason="ERROR",
                error_code=ErrorCode.TARGETING_KEY_MISSING,
                error_message="flagstore decides per context: give a targeting key",
            )
        try:
            resolved = self._store.resolve(flag_key, key)
        except ValueError as refused:
            # A key no store takes (over 1,024 bytes, or holding NUL), as serve answers it.
            return FlagResolutionDetails(
                value=default_value,
                reason="ERROR",
                error_code=ErrorCode.INVALID_CONTEXT,
                error_message=str(refused),
            )
        if resolved is None:
            return FlagResolutionDetails(
                value=default_value,
                reason="ERROR",
                error_code=ErrorCode.FLAG_NOT_FOUND,
                error_message=f"flag {flag_key!r} does not exist",
            )
        value, reason, source, why = resolved
        return FlagResolutionDetails(
            value=value,
            variant="on" if value else "off",
            reason=reason,
            flag_metadata={"source": source, "reason": why},
        )

    def _mismatch(self, flag_key: str, default_value: Any) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(
            value=default_value,
            reason="ERROR",
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message=f"flag {flag_key!r} is boolean",
        )

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[str]:
        return self._mismatch(flag_key, default_value)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[int]:
        return self._mismatch(flag_key, default_value)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: Optional[EvaluationContext] = None
    ) -> FlagResolutionDetails[float]:
        return self._mismatch(flag_key, default_value)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Union[Sequence[FlagValueType], Mapping[str, FlagValueType]],
        evaluation_context: Optional[EvaluationContext] = None,
    ) -> FlagResolutionDetails[Union[Sequence[FlagValueType], Mapping[str, FlagValueType]]]:
        return self._mismatch(flag_key, default_value)
