"""logfmt.py: parse stagerelay's logfmt lines (key=value key="quoted \\" value").

parse_line() returns a dict, or None for a line that is not logfmt (such as
"stagerelay: configuration ... is valid").
"""

import re

_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.\-]*)=("(?:[^"\\]|\\.)*"|[^\s]*)')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(v):
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1),
                                                       "\\" + m.group(1)),
                      v[1:-1])
    return v


def parse_line(line):
    line = line.strip()
    if not line.startswith(("ts=", "time=", "level=")):
        return None
    out = {}
    for m in _PAIR.finditer(line):
        out[m.group(1)] = _unquote(m.group(2))
    return out if "msg" in out else None


def parse(text):
    """Every logfmt record in text (a str of many lines)."""
    return [r for r in map(parse_line, text.splitlines()) if r is not None]
