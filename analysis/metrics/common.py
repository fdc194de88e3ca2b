"""What every family of figures uses: numbers out of the trace DataFrames, plain values for JSON."""
from __future__ import annotations

import math

import pandas as pd

from ..figures import REDUCTIONS

MB = 1e6


def _rows(kinds, *names) -> pd.DataFrame:
    frames = [kinds.get_group(n) for n in names if n in kinds.groups]
    return pd.concat(frames) if frames else pd.DataFrame(columns=["t"])


def _value(rows: pd.DataFrame, column: str):
    """The last traced value of a column, None when absent."""
    if not len(rows) or column not in rows:
        return None
    value = rows[column].iloc[-1]
    return None if _missing(value) else _clean(value)


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _int_sum(series: pd.Series) -> int:
    return int(_num(series).fillna(0).sum()) if len(series) else 0


def _known_sum(series: pd.Series) -> int | None:
    """The sum, or None where a row does not know it (traces written before it was traced)."""
    values = _num(series)
    return None if values.isna().any() else int(values.sum())


def _column_sum(rows: pd.DataFrame, column: str) -> int:
    return _int_sum(rows[column]) if column in rows else 0


def _float(value) -> float | None:
    return None if _missing(value) else float(value)


def _missing(value) -> bool:
    if value is None or isinstance(value, (list, dict, str)):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _clean(value):
    """Plain Python values for JSON: numpy scalars to int/float, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if _missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _nan(value) -> float:
    return float("nan") if value is None else value


def _mean(values) -> float | None:
    """The mean of the known values, as the tables reduce a per-source figure."""
    return REDUCTIONS["mean"]([v for v in values if v is not None])
