"""Reads a Tend export the way an analyst would, and checks it.

usage: python3 read_export.py DIR

Every dataset the codebook lists is read with pandas (CSV with the types
the codebook gives; Parquet through pyarrow), and counted and aggregated
with DuckDB straight from the files. Fails (exit 1, naming the dataset and
column) when a file does not match its codebook: columns, types, nulls,
allowed values, row counts. Prints JSON: per dataset its rows and types,
every distinct text value (for the caller's marker checks), adherence by
participant and arc week of their current enrollment (DuckDB), and every
score (pandas).
"""

import json
import pathlib
import sys

import duckdb
import pandas as pd
import pyarrow.parquet as pq

ARROW = {
    "pseudonym": "string",
    "code": "string",
    "enum": "dictionary<values=string, indices=int32, ordered=0>",
    "integer": "int64",
    "decimal": "double",
    "boolean": "bool",
    "date": "date32[day]",
    "instant": "timestamp[us, tz=UTC]",
    "time": "time64[us]",
}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def read_csv(path, columns):
    """A CSV read with the codebook's types, as an analyst would."""
    dtype = {}
    for c in columns:
        t = c["type"]
        dtype[c["column"]] = {
            "integer": "Int64",
            "decimal": "float64",
            "boolean": "boolean",
            "enum": "category",
        }.get(t, "string")
    frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""])
    for c in columns:
        name = c["column"]
        raw = frame[name]
        if c["type"] == "date":
            frame[name] = pd.to_datetime(raw, format="%Y-%m-%d")
        elif c["type"] == "instant":
            frame[name] = pd.to_datetime(raw, format="ISO8601", utc=True)
        if frame[name].notna().sum() != raw.notna().sum():
            fail(f"{path.name}: {name}: some values do not parse as {c['type']}")
    return frame


def main():
    root = pathlib.Path(sys.argv[1])
    book = json.loads((root / "codebook.json").read_text())
    fmt = book["format"]
    db = duckdb.connect()
    out = {"format": fmt, "position": book["position"], "datasets": {}, "text": {}}
    frames = {}
    for d in book["datasets"]:
        path = root / d["file"]
        columns = d["columns"]
        names = [c["column"] for c in columns]
        if fmt == "parquet":
            schema = pq.read_schema(path)
            if schema.names != names:
                fail(f"{d['file']}: columns {schema.names} != codebook {names}")
            for c in columns:
                got = str(schema.field(c["column"]).type)
                if got != ARROW[c["type"]]:
                    fail(f"{d['file']}: {c['column']} is {got}, codebook says {c['type']}")
            frame = pd.read_parquet(path, engine="pyarrow")
            counted = db.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        else:
            frame = read_csv(path, columns)
            if list(frame.columns) != names:
                fail(f"{d['file']}: columns {list(frame.columns)} != codebook {names}")
            counted = db.execute(
                f"SELECT count(*) FROM read_csv('{path}', header=true)"
            ).fetchall()[0][0]
        if len(frame) != d["rows"] or counted != d["rows"]:
            fail(f"{d['file']}: pandas {len(frame)}, duckdb {counted}, codebook {d['rows']} rows")
        for c in columns:
            series = frame[c["column"]]
            if not c["nullable"] and series.isna().any():
                fail(f"{d['file']}: {c['column']} has empty values but is not nullable")
            if c["type"] == "enum":
                allowed = {v["value"] for v in c["values"]}
                seen = set(series.dropna().astype(str))
                if not seen <= allowed:
                    fail(f"{d['file']}: {c['column']} holds {seen - allowed}")
            if c["type"] in ("pseudonym", "code", "enum"):
                out["text"].setdefault(d["dataset"], {})[c["column"]] = sorted(
                    set(series.dropna().astype(str))
                )
        out["datasets"][d["dataset"]] = {
            "rows": len(frame),
            "dtypes": {k: str(v) for k, v in frame.dtypes.items()},
        }
        frames[d["dataset"]] = frame
        db.register(d["dataset"], frame)

    # Adherence by arc week of each participant's current enrollment, as
    # an analyst would count it: rows are what came due.
    rows = db.execute(
        """
        SELECT o.participant, o.arc_week,
               count(*) AS due,
               count(*) FILTER (WHERE o.status = 'done') AS done,
               count(*) FILTER (WHERE o.status = 'late') AS late,
               count(*) FILTER (WHERE o.status = 'missed') AS missed
        FROM occurrences o JOIN participants p
          ON o.participant = p.participant AND o.enrollment = p.enrollment
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).fetchall()
    out["adherence"] = [
        {"participant": str(r[0]), "arc_week": int(r[1]), "due": r[2], "done": r[3],
         "late": r[4], "missed": r[5]}
        for r in rows
    ]
    a = frames["assessments"]
    out["scores"] = [
        {"assessment": str(r.assessment), "scale": str(r.scale), "score": float(r.score),
         "numerator": int(r.score_numerator), "denominator": int(r.score_denominator),
         "baseline": bool(r.baseline)}
        for r in a.itertuples()
    ]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
