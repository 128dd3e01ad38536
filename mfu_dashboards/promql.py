"""The cluster filter in every selector of a PromQL expression: `x{a="b"}` -> `x{cluster=~"$cluster", a="b"}`.

A small scanner, not a parser: strings, ranges, Grafana variables and grouping label lists are copied
as they are; an identifier that is not a function, aggregation or keyword is a metric name.
"""

from __future__ import annotations

import re

CLUSTER_MATCHER = 'cluster=~"$cluster"'

_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _GROUPING | {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "limitk", "limit_ratio",
}  # fmt: skip
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<var>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
      | (?P<range>\[[^\]]*\])
      | (?P<number>\d[\d.]*(?:[eE][+-]?\d+)?[a-zA-Z]*)
      | (?P<ident>[a-zA-Z_:][\w:]*)
      | (?P<brace>\{)
      | (?P<other>.)""",
    re.X | re.S,
)


def _skip_parens(expr: str, start: int) -> int:
    """The index after the `)` closing the `(` at `start`."""
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced parentheses in {expr!r}")


def with_cluster(expr: str, matcher: str = CLUSTER_MATCHER) -> str:
    """`expr` with `matcher` added to every vector selector."""
    out: list[str] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m is not None
        kind, text = m.lastgroup, m.group()
        pos = m.end()
        if kind == "ident":
            rest = expr[pos:].lstrip()
            out.append(text)
            if text.lower() in _GROUPING and rest.startswith("("):
                end = _skip_parens(expr, expr.index("(", pos))
                out.append(expr[pos:end])
                pos = end
            elif rest.startswith("(") or text.lower() in _KEYWORDS:
                pass  # a function or aggregation call, or a keyword
            elif rest.startswith("{"):
                gap = len(expr[pos:]) - len(rest)
                out.append(expr[pos : pos + gap])
                pos = _open_selector(expr, pos + gap, matcher, out)
            else:
                out.append("{" + matcher + "}")
        elif kind == "brace":  # a selector without a metric name: {__name__=~"..."}
            pos = _open_selector(expr, pos - 1, matcher, out)
        else:
            out.append(text)
    return "".join(out)


def _open_selector(expr: str, brace: int, matcher: str, out: list[str]) -> int:
    """Copy the selector `{...}` at `brace` with `matcher` first; the index after its `}`."""
    end = brace + 1
    while expr[end] != "}":  # label values may hold a "}"
        string = _STRING.match(expr, end)
        end = string.end() if string else end + 1
    inner = expr[brace + 1 : end]
    out.append("{" + matcher + (", " + inner.lstrip() if inner.strip() else "") + "}")
    return end + 1
