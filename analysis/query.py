"""Filter a sweep's trial runs in MLflow by grid field or metric.

    python -m analysis.query --out DIR --where "model='seatbelt' and beta>=4"
    python -m analysis.query --tracking-uri URI --experiment NAME --where "mig > 0.2" --csv runs.csv

The where-grammar: clauses joined by ``and``; a clause is ``FIELD OP VALUE`` with OP one of
``= == != < <= > >=`` (and ``like``/``ilike`` for strings) or ``FIELD in (V1, V2, ...)``;
VALUE a quoted string or a number. Fields:

* grid fields ``dataset, model, beta, layers, z_dim, seed, trial_id`` are MLflow **params**;
* ``params.X``, ``metrics.X``, ``tags.X``, ``attributes.X`` name a column explicitly;
* any other bare name is a **metric** when compared with a number (``elbo < -90``) and a param
  when compared with a string.

MLflow stores params as strings (``beta`` may be ``"4"`` or ``"4.0"``) and its filter language
only compares them as strings, so a param compared with a *number* is not pushed down: it is
filtered client-side after converting the param to a number. String comparisons on params and all
metric comparisons are pushed down into ``mlflow.search_runs``'s filter string; every clause is
then checked again client-side on the returned table (cheap), so the result is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.load import read_tracking, results_dir
from results import layout, records
from results.schema import GRID_FIELDS

__all__ = ["Clause", "parse_where", "to_mlflow_filter", "query_runs", "main"]

GRID_PARAMS = (*GRID_FIELDS, "trial_id")  # the MLflow params of a trial's run (sweep.infra.tracking)
_PREFIXES = ("params", "metrics", "tags", "attributes")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
      | (?P<op><=|>=|!=|<>|==|=|<|>)
      | (?P<punct>[(),])
      | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    """One comparison: ``kind`` is params | metrics | tags | attributes."""

    kind: str
    key: str
    op: str  # = != < <= > >= like ilike in
    value: object  # str | float | tuple of those for "in"

    @property
    def column(self) -> str:
        return f"{self.kind}.{self.key}" if self.kind != "attributes" else self.key

    @property
    def numeric(self) -> bool:
        vals = self.value if isinstance(self.value, tuple) else (self.value,)
        return all(isinstance(v, float) for v in vals)


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise AnalysisError(
                f"cannot read --where at {text[pos:pos + 20]!r}: write clauses like "
                "\"model='seatbelt' and beta>=4\" (strings in quotes, numbers bare)"
            )
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _classify(name: str, value: object) -> tuple[str, str]:
    head, _, rest = name.partition(".")
    if rest and head in _PREFIXES:
        return head, rest
    if name in ("status", "run_name", "start_time", "end_time", "run_id"):
        return "attributes", name
    if name in GRID_PARAMS:
        return "params", name
    vals = value if isinstance(value, tuple) else (value,)
    return ("metrics", name) if all(isinstance(v, float) for v in vals) else ("params", name)


def _value(toks: list[tuple[str, str]], j: int, text: str) -> tuple[object, int]:
    """The value token at ``j`` of ``--where text`` (a quoted string, a number, true/false) and the
    index after it."""
    if j >= len(toks):
        raise AnalysisError(f"--where ends after an operator: {text!r}; add a value, e.g. beta>=4")
    kind, tok = toks[j]
    if kind == "str":
        return _unquote(tok), j + 1
    if kind == "num":
        return float(tok), j + 1
    if kind == "name" and tok.lower() in ("true", "false"):
        return (1.0 if tok.lower() == "true" else 0.0), j + 1
    raise AnalysisError(
        f"expected a value at {tok!r} in --where {text!r}: quote strings (model='seatbelt'), leave numbers bare"
    )


def _in_clause(toks: list[tuple[str, str]], i: int, name: str, text: str) -> tuple[Clause, int]:
    """``name in (v, ...)`` with ``toks[i]`` the ``in``: the clause and the index after the list."""
    if i + 1 >= len(toks) or toks[i + 1][1] != "(":
        raise AnalysisError(f"write 'in' lists as {name} in (1, 2) in --where {text!r}")
    j, vals = i + 2, []
    while True:
        v, j = _value(toks, j, text)
        vals.append(v)
        if j < len(toks) and toks[j][1] == ",":
            j += 1
            continue
        if j < len(toks) and toks[j][1] == ")":
            j += 1
            break
        raise AnalysisError(f"unclosed 'in (...)' list in --where {text!r}")
    tv = tuple(vals)
    k, key = _classify(name, tv)
    return Clause(k, key, "in", tv), j


def _clause(toks: list[tuple[str, str]], i: int, text: str) -> tuple[Clause, int]:
    """The clause starting at ``toks[i]`` (a field name) and the index after it."""
    kind, tok = toks[i]
    if kind != "name" or tok.lower() in ("and", "or", "in", "not", "like", "ilike"):
        raise AnalysisError(f"expected a field name at {tok!r} in --where {text!r}")
    name = tok
    if i + 1 >= len(toks):
        raise AnalysisError(f"--where clause {name!r} has no comparison: write e.g. {name}>=4")
    okind, op = toks[i + 1]
    if okind == "name" and op.lower() == "in":
        return _in_clause(toks, i + 1, name, text)
    if okind == "op" or (okind == "name" and op.lower() in ("like", "ilike")):
        op = {"==": "=", "<>": "!="}.get(op, op.lower() if okind == "name" else op)
        v, i = _value(toks, i + 2, text)
        if op in ("like", "ilike") and not isinstance(v, str):
            raise AnalysisError(f"{op} needs a quoted pattern, e.g. {name} like 'dsprites%'")
        k, key = _classify(name, v)
        return Clause(k, key, op, v), i
    raise AnalysisError(f"expected an operator (= != < <= > >= in like) after {name!r} in --where {text!r}")


def _after_clause(toks: list[tuple[str, str]], i: int, text: str) -> int:
    """The index of the next clause: past the ``and`` at ``toks[i]`` (the end if ``i`` is)."""
    if i >= len(toks):
        return i
    kind, tok = toks[i]
    if kind == "name" and tok.lower() == "or":
        raise AnalysisError("--where supports only 'and' (MLflow filters have no 'or'): "
                            "use 'in (...)' or run two queries")
    if not (kind == "name" and tok.lower() == "and"):
        raise AnalysisError(f"expected 'and' at {tok!r} in --where {text!r}")
    if i + 1 >= len(toks):
        raise AnalysisError(f"--where ends with 'and': {text!r}")
    return i + 1


def parse_where(text: str | None) -> list[Clause]:
    """Parse the where-grammar into clauses (AnalysisError with a hint when it cannot)."""
    if text is None or not text.strip():
        return []
    toks = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while i < len(toks):
        clause, i = _clause(toks, i, text)
        clauses.append(clause)
        i = _after_clause(toks, i, text)
    for c in clauses:
        if c.kind == "metrics" and not c.numeric:
            raise AnalysisError(f"metric {c.key!r} is a number: compare it with a number, e.g. {c.key} > 0")
    return clauses


def _lit(v: object) -> str:
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return "'" + str(v).replace("'", "\\'") + "'"


def _ident(kind: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{kind}.{key}"
    return f"{kind}.`{key}`"


def _pushable(c: Clause) -> bool:
    if c.kind == "metrics":
        return c.op in ("=", "!=", "<", "<=", ">", ">=")
    if c.kind in ("params", "tags"):
        # params are strings in MLflow: only string (in)equality / patterns are exact
        return not c.numeric and c.op in ("=", "!=", "like", "ilike")
    if c.kind == "attributes":
        return c.key in ("status", "run_name") and not c.numeric and c.op in ("=", "!=", "like", "ilike")
    return False


def to_mlflow_filter(clauses: list[Clause]) -> str:
    """The MLflow filter string for the clauses that MLflow evaluates exactly (see module doc);
    ``in (...)`` lists and numeric comparisons on params are left to the client-side check."""
    parts = []
    for c in clauses:
        if not _pushable(c):
            continue
        ident = _ident(c.kind, c.key) if c.kind != "attributes" else f"attributes.{c.key}"
        op = {"like": "LIKE", "ilike": "ILIKE"}.get(c.op, c.op)
        parts.append(f"{ident} {op} {_lit(c.value)}")
    return " and ".join(parts)


def _like(pattern: str, case: bool) -> re.Pattern:
    rx = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{rx}$", 0 if case else re.IGNORECASE | re.DOTALL)


def _client_mask(df: pd.DataFrame, c: Clause) -> pd.Series:
    col = c.column
    if col not in df.columns:
        return pd.Series(False, index=df.index)
    series = df[col]
    if c.numeric:
        x = pd.to_numeric(series, errors="coerce").astype(float)
        vals = c.value if isinstance(c.value, tuple) else (c.value,)
        if c.op == "in":
            mask = pd.Series(False, index=df.index)
            for v in vals:
                mask |= np.isclose(x, v, rtol=1e-9, atol=1e-12)
            return mask & x.notna()
        v = float(c.value)
        eq = pd.Series(np.isclose(x, v, rtol=1e-9, atol=1e-12), index=df.index)
        res = {"=": eq, "!=": ~eq, "<": x < v, "<=": (x < v) | eq, ">": x > v, ">=": (x > v) | eq}[c.op]
        return res & x.notna()
    s = series.astype("string")
    if c.op == "in":
        return s.isin([str(v) for v in c.value]).fillna(False).astype(bool)
    if c.op in ("like", "ilike"):
        rx = _like(str(c.value), case=c.op == "like")
        return s.map(lambda t: bool(rx.match(t)) if isinstance(t, str) else False).astype(bool)
    v = str(c.value)
    ops = {"=": s == v, "!=": s != v, "<": s < v, "<=": s <= v, ">": s > v, ">=": s >= v}
    return ops[c.op].fillna(False).astype(bool)


@contextlib.contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    import mlflow

    if uri is None:
        yield
        return
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def query_runs(
    where: str | None = None,
    *,
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """The trial runs of ``experiment`` matching ``where``, one row per run.

    Columns: ``run_id, run_status, trial_id``, the grid fields (numbers where they are numbers),
    every other param, then the metrics (``metrics.X`` → ``X``; a metric whose name clashes with
    a param keeps its ``metrics.`` prefix). The parent run and other runs without a ``trial_id``
    (tag or param) are left out."""
    clauses = parse_where(where)
    filter_string = to_mlflow_filter(clauses)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with _tracking_uri(tracking_uri):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                names = [e.name for e in client.search_experiments()]
                raise AnalysisError(
                    f"no MLflow experiment named {experiment!r} at {mlflow.get_tracking_uri()}: "
                    f"pass --experiment (one of {names}) or the right --tracking-uri"
                )
            df = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=filter_string,
                                    output_format="pandas")
    except MlflowException as exc:
        raise AnalysisError(
            f"MLflow rejected the query (filter {filter_string!r}): {str(exc).splitlines()[0]}. "
            "Check --where, --tracking-uri and --experiment"
        ) from exc
    if df.empty:
        return _tidy(df, clauses)
    for c in clauses:  # exact client-side check of every clause (numeric params in particular)
        df = df.loc[_client_mask(df, c)]
    if parent_run_id:
        df = df.loc[df["run_id"] != parent_run_id]
    tid = _trial_id_column(df)
    if tid is not None and tid.notna().any():
        df = df.loc[tid.notna()]
    return _tidy(df, clauses)


def _trial_id_column(df: pd.DataFrame) -> pd.Series | None:
    cols = [c for c in ("tags.trial_id", "params.trial_id") if c in df.columns]
    if not cols:
        return None
    s = df[cols[0]]
    for c in cols[1:]:
        s = s.fillna(df[c])
    return s


def _tidy(df: pd.DataFrame, clauses: list[Clause]) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["run_id"] = df.get("run_id", pd.Series(dtype="object", index=df.index))
    out["run_status"] = df.get("status", pd.Series(dtype="object", index=df.index))
    tid = _trial_id_column(df)
    out["trial_id"] = tid if tid is not None else pd.Series(dtype="object", index=df.index)
    params = [c for c in df.columns if c.startswith("params.") and c != "params.trial_id"]
    names = [p.removeprefix("params.") for p in params]
    order = [f"params.{g}" for g in GRID_PARAMS if f"params.{g}" in params] + \
            sorted(p for p in params if p.removeprefix("params.") not in GRID_PARAMS)
    for p in order:
        name = p.removeprefix("params.")
        col = df[p]
        num = pd.to_numeric(col, errors="coerce")
        if col.notna().sum() and num.notna().sum() == col.notna().sum():
            col = num.astype("Int64") if np.all(np.isclose(num.dropna() % 1, 0)) and name in ("layers", "z_dim", "seed") else num
        out[name] = col
    for g in GRID_PARAMS:
        if g != "trial_id" and g not in out.columns:
            out[g] = pd.Series(dtype="object", index=df.index)
    for m in sorted(c for c in df.columns if c.startswith("metrics.")):
        name = m.removeprefix("metrics.")
        out[name if name not in names and name not in out.columns else m] = df[m]
    sort = [c for c in GRID_FIELDS if c in out.columns and out[c].notna().any()]
    if sort and len(out):
        out = out.sort_values(sort, kind="stable")
    return out.reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.query",
        description="List a sweep's trial runs in MLflow filtered by grid fields and metrics, "
                    "e.g. --where \"model='seatbelt' and beta>=4\".",
    )
    parser.add_argument("--where", default=None,
                        help="clauses joined by 'and': FIELD OP VALUE (OP: = != < <= > >= like) or FIELD in (...)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="a sweep's results folder: its tracking.json gives the URI, experiment and parent run")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: tracking.json, else MLflow's)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: from --out's tracking.json)")
    parser.add_argument("--columns", default=None, help="comma-separated columns to show/write (default: all)")
    parser.add_argument("--sort-by", default=None, help="comma-separated columns to sort by")
    parser.add_argument("--csv", metavar="FILE", default=None, help="write the table as CSV")
    parser.add_argument("--parquet", metavar="FILE", default=None, help="write the table as Parquet")
    parser.add_argument("--max-rows", type=int, default=200, help="rows to print (default 200)")
    args = parser.parse_args(argv)
    try:
        df = _run(args)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wrote = []
    try:
        if args.csv:
            df.to_csv(args.csv, index=False)
            wrote.append(args.csv)
        if args.parquet:
            df.to_parquet(args.parquet, index=False)
            wrote.append(args.parquet)
    except OSError as exc:
        print(f"error: cannot write {exc.filename}: {exc.strerror}; pick a writable path", file=sys.stderr)
        return 2
    if wrote:
        print(f"{len(df)} run(s) written to {', '.join(wrote)}")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(df.to_string(index=False, max_rows=args.max_rows) if len(df) else "(no matching runs)")
        print(f"{len(df)} run(s)")
    return 0


def _run(args: argparse.Namespace) -> pd.DataFrame:
    tracking: dict = {}
    if args.out:
        tracking = read_tracking(results_dir(args.out)) or {}
        if not tracking and not args.experiment:
            raise AnalysisError(f"{Path(args.out) / layout.TRACKING_JSON} is missing: pass --experiment (and --tracking-uri)")
    experiment = args.experiment or tracking.get("experiment_name")
    if not experiment:
        raise AnalysisError("no experiment: pass --out DIR (a sweep's results folder) or --experiment NAME")
    uri = records.tracking_uri(args.tracking_uri, tracking)
    parent = tracking.get("parent_run_id") if experiment == tracking.get("experiment_name") else None
    df = query_runs(args.where, experiment=experiment, tracking_uri=uri, parent_run_id=parent)
    if args.sort_by:
        keys = [k.strip() for k in args.sort_by.split(",") if k.strip()]
        unknown = [k for k in keys if k not in df.columns]
        if unknown and len(df):
            raise AnalysisError(f"cannot sort by {unknown}: columns are {list(df.columns)}")
        if len(df):
            df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",") if c.strip()]
        unknown = [c for c in cols if c not in df.columns]
        if unknown:
            raise AnalysisError(f"unknown column(s) {unknown}: available are {list(df.columns)}")
        df = df[cols]
    return df


if __name__ == "__main__":
    sys.exit(main())
