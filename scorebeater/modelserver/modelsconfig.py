"""TF Serving's ``models.config`` (a text-format ``ModelServerConfig``), the subset we serve.

Supported::

    model_config_list {
      config {
        name: 'score_beater'
        base_path: '/models/score_beater'
        model_platform: 'tensorflow'
        model_version_policy { latest { num_versions: 2 } }   # or all {} / specific { versions: 3 }
        version_labels { key: 'stable' value: 3 }
      }
    }

Text-format syntax accepted: ``#`` comments, single- or double-quoted strings with escapes,
optional ``:`` before a message, ``{}`` or ``<>`` around messages, optional ``,``/``;``
separators. Any other field is reported as unsupported rather than silently ignored, so a
config that relies on a feature the stand-in lacks fails loudly. A relative ``base_path``
resolves against the current directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from scorebeater.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which of the versions found on disk are served (TF Serving's ``ServableVersionPolicy``)."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, found: Iterable[int]) -> set[int]:
        """The aspired versions among ``found`` (the version numbers present on disk)."""
        present = sorted(set(found), reverse=True)
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return set(present) & set(self.versions)
        return set(present[: self.num_versions])


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One served model: its URL name, version directory root, policy and labels."""

    name: str
    base_path: Path
    platform: str = "tensorflow"
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


# --- text format ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:;,\[\]])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}

Scalar = str | int | float
Node = list[tuple[str, "Scalar | Node", int]]


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    line: int
    start: int = 0
    """Offset of the token's first character in the text (the writer edits by offset)."""


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _tokens(text: str, source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(source, [f"line {line}: unexpected character {text[pos]!r}"])
        kind = match.lastgroup or ""
        value = match.group()
        if kind != "ws":
            out.append(_Tok(kind, value, line, pos))
        line += value.count("\n")
        pos = match.end()
    return out


class _Parser:
    def __init__(self, tokens: list[_Tok], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    def _fail(self, message: str) -> ConfigError:
        line = (
            self.tokens[self.pos].line
            if self.pos < len(self.tokens)
            else (self.tokens[-1].line if self.tokens else 1)
        )
        return ConfigError(self.source, [f"line {line}: {message}"])

    def _peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def message(self, closer: str | None) -> Node:
        fields: Node = []
        while True:
            tok = self._peek()
            if tok is None:
                if closer is not None:
                    raise self._fail(f"expected {closer!r} before the end of the file")
                return fields
            if closer is not None and tok.kind == "punct" and tok.text == closer:
                self.pos += 1
                return fields
            if tok.kind != "ident":
                raise self._fail(f"expected a field name, got {tok.text!r}")
            self.pos += 1
            fields.append((tok.text, self._value(tok.text), tok.line))
            nxt = self._peek()
            if nxt is not None and nxt.kind == "punct" and nxt.text in ",;":
                self.pos += 1

    def _value(self, name: str) -> Scalar | Node:
        tok = self._peek()
        if tok is not None and tok.kind == "punct" and tok.text == ":":
            self.pos += 1
            tok = self._peek()
        if tok is None:
            raise self._fail(f"field {name!r} has no value")
        if tok.kind == "punct" and tok.text in "{<":
            self.pos += 1
            return self.message("}" if tok.text == "{" else ">")
        self.pos += 1
        if tok.kind == "string":
            return _unquote(tok.text)
        if tok.kind == "number":
            number = tok.text.rstrip("fF")
            if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", number):
                return int(number, 0)
            return float(number)
        if tok.kind == "ident":
            return tok.text
        raise self._fail(f"field {name!r} has an unexpected value {tok.text!r}")


def parse_text_proto(text: str, source: str = "models.config") -> Node:
    """Parse protobuf text format into ``[(field, value or nested fields, line), ...]``.

    Raises:
        ConfigError: the text is not valid text format (the problem names the line).
    """
    parser = _Parser(_tokens(text, source), source)
    return parser.message(None)


# --- ModelServerConfig ----------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, line: int, where: str, message: str) -> None:
        self.items.append(f"line {line}: {where}: {message}")


def _int(value: Scalar | Node, line: int, where: str, problems: _Problems) -> int | None:
    if isinstance(value, int) and value >= 0:
        return value
    problems.add(line, where, f"must be a non-negative integer, got {value!r}")
    return None


def _string(value: Scalar | Node, line: int, where: str, problems: _Problems) -> str | None:
    if isinstance(value, str) and value:
        return value
    problems.add(line, where, f"must be a non-empty quoted string, got {value!r}")
    return None


def _latest(body: Node, where: str, problems: _Problems) -> VersionPolicy:
    num = 1
    for fname, value, fline in body:
        if fname != "num_versions":
            problems.add(fline, f"{where}.{fname}", "unknown field")
            continue
        got = _int(value, fline, f"{where}.num_versions", problems)
        if got is not None and got < 1:
            problems.add(fline, f"{where}.num_versions", "must be >= 1")
        elif got is not None:
            num = got
    return VersionPolicy(kind="latest", num_versions=num)


def _specific(body: Node, line: int, where: str, problems: _Problems) -> VersionPolicy:
    versions: list[int] = []
    for fname, value, fline in body:
        if fname != "versions":
            problems.add(fline, f"{where}.{fname}", "unknown field")
            continue
        got = _int(value, fline, f"{where}.versions", problems)
        if got is not None:
            versions.append(got)
    if not versions:
        problems.add(line, where, "must list at least one version")
    return VersionPolicy(kind="specific", versions=tuple(versions))


def _policy(node: Scalar | Node, line: int, where: str, problems: _Problems) -> VersionPolicy:
    if not isinstance(node, list) or len(node) != 1:
        problems.add(line, where, "must hold exactly one of latest {...}, all {} or specific {...}")
        return VersionPolicy()
    kind, body, kline = node[0]
    if not isinstance(body, list):
        problems.add(kline, f"{where}.{kind}", "must be a message")
        return VersionPolicy()
    if kind == "latest":
        return _latest(body, f"{where}.latest", problems)
    if kind == "specific":
        return _specific(body, kline, f"{where}.specific", problems)
    if kind == "all":
        for fname, _, fline in body:
            problems.add(fline, f"{where}.all.{fname}", "unknown field")
        return VersionPolicy(kind="all")
    problems.add(kline, f"{where}.{kind}", "unknown policy (latest, all or specific)")
    return VersionPolicy()


def _label(node: Scalar | Node, line: int, where: str, problems: _Problems) -> tuple[str, int] | None:
    if not isinstance(node, list):
        problems.add(line, where, "must be a message { key: 'label' value: N }")
        return None
    key: str | None = None
    value: int | None = None
    for fname, fvalue, fline in node:
        if fname == "key":
            key = _string(fvalue, fline, f"{where}.key", problems)
            if key is not None and not re.fullmatch(r"[^/:]+", key):
                problems.add(fline, f"{where}.key", f"{key!r} cannot appear in a URL (no '/' or ':')")
                key = None
        elif fname == "value":
            value = _int(fvalue, fline, f"{where}.value", problems)
        else:
            problems.add(fline, f"{where}.{fname}", "unknown field")
    if key is None or value is None:
        if key is None and value is None:
            problems.add(line, where, "needs a key and a value")
        return None
    return key, value


def _model(node: Node, line: int, index: int, problems: _Problems, base_dir: Path) -> ModelSource | None:
    where = f"model_config_list.config[{index}]"
    name: str | None = None
    base: str | None = None
    platform = "tensorflow"
    policy = VersionPolicy()
    labels: dict[str, int] = {}
    for fname, value, fline in node:
        at = f"{where}.{fname}"
        if fname == "name":
            name = _string(value, fline, at, problems)
        elif fname == "base_path":
            base = _string(value, fline, at, problems)
        elif fname == "model_platform":
            platform = _string(value, fline, at, problems) or platform
            if platform != "tensorflow":
                problems.add(fline, at, f"only 'tensorflow' is served, got {platform!r}")
        elif fname == "model_version_policy":
            policy = _policy(value, fline, at, problems)
        elif fname == "version_labels":
            pair = _label(value, fline, at, problems)
            if pair is not None:
                if pair[0] in labels:
                    problems.add(fline, at, f"label {pair[0]!r} is defined twice")
                labels[pair[0]] = pair[1]
        else:
            problems.add(fline, at, "not supported by the stand-in")
    if name is None or base is None:
        problems.add(line, where, "needs a name and a base_path")
        return None
    if not re.fullmatch(r"[^/:]+", name):
        problems.add(line, f"{where}.name", f"{name!r} cannot appear in a URL (no '/' or ':')")
    path = Path(base)
    return ModelSource(
        name=name,
        base_path=path if path.is_absolute() else base_dir / path,
        platform=platform,
        policy=policy,
        labels=labels,
    )


def parse_models_config(
    text: str, *, source: str = "models.config", base_dir: Path | None = None
) -> list[ModelSource]:
    """The models a ``ModelServerConfig`` text declares, checked.

    ``base_dir`` (default: the current directory) anchors relative ``base_path`` values.

    Raises:
        ConfigError: syntax errors, or every semantic problem found (unknown or unsupported
            fields, missing name/base_path, bad policy, duplicate model names or labels).
    """
    root = parse_text_proto(text, source)
    anchor = base_dir if base_dir is not None else Path.cwd()
    problems = _Problems()
    models: list[ModelSource] = []
    for fname, value, line in root:
        if fname != "model_config_list":
            problems.add(line, fname, "not supported by the stand-in (only model_config_list)")
            continue
        if not isinstance(value, list):
            problems.add(line, fname, "must be a message")
            continue
        for cname, cvalue, cline in value:
            if cname != "config" or not isinstance(cvalue, list):
                problems.add(cline, f"model_config_list.{cname}", "unknown field (expected config { ... })")
                continue
            model = _model(cvalue, cline, len(models), problems, anchor)
            if model is not None:
                if any(m.name == model.name for m in models):
                    problems.add(
                        cline, "model_config_list.config.name", f"model {model.name!r} is declared twice"
                    )
                models.append(model)
    if problems.items:
        raise ConfigError(source, problems.items)
    return models


def load_models_config(path: Path, *, base_dir: Path | None = None) -> list[ModelSource]:
    """Read and parse a ``models.config`` file (blocking: call from a worker thread in async code).

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from exc
    return parse_models_config(text, source=str(path), base_dir=base_dir)


# --- label writer ---------------------------------------------------------------------------

VERSION_LABEL = re.compile(r"[A-Za-z0-9_]+")
"""A version label as TF Serving documents them: word characters only (``[a-zA-Z0-9_]+``)."""


def check_version_label(label: str) -> str:
    """Return ``label`` if TF Serving accepts it as a version label.

    Raises:
        ConfigError: the label is empty or has a character outside ``[A-Za-z0-9_]``.
    """
    if not VERSION_LABEL.fullmatch(label):
        raise ConfigError("version label", [f"{label!r}: a label is [A-Za-z0-9_]+ (TF Serving's rule)"])
    return label


def _is_punct(tok: _Tok, chars: str) -> bool:
    return tok.kind == "punct" and tok.text in chars


def _after_message(toks: list[_Tok], opener: int) -> int:
    """The index after the closer matching the ``{``/``<`` at ``opener``."""
    stack: list[str] = []
    i = opener
    while i < len(toks):
        tok = toks[i]
        if _is_punct(tok, "{<"):
            stack.append("}" if tok.text == "{" else ">")
        elif tok.kind == "punct" and stack and tok.text == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    raise ConfigError("models.config", ["unbalanced braces"])  # pragma: no cover - parsed before


def _fields(toks: list[_Tok], start: int, stop: int) -> list[tuple[str, int, int]]:
    """``(name, first value token, index after the value)`` of each field of ``toks[start:stop]``.

    A message value's first token is its opener and its closer sits just before the end index.
    Only called on text :func:`parse_text_proto` has accepted, so the shape is known good.
    """
    out: list[tuple[str, int, int]] = []
    i = start
    while i < stop:
        name = toks[i].text
        i += 1
        if _is_punct(toks[i], ":"):
            i += 1
        first = i
        i = _after_message(toks, i) if _is_punct(toks[i], "{<") else i + 1
        out.append((name, first, i))
        if i < stop and _is_punct(toks[i], ",;"):
            i += 1
    return out


def _model_body(toks: list[_Tok], model: str) -> tuple[int, int] | None:
    """``(opener, closer)`` token indices of ``model``'s ``config { ... }`` message."""
    for name, first, end in _fields(toks, 0, len(toks)):
        if name != "model_config_list":
            continue
        for cname, cfirst, cend in _fields(toks, first + 1, end - 1):
            if cname != "config":
                continue
            for fname, ffirst, _ in _fields(toks, cfirst + 1, cend - 1):
                tok = toks[ffirst]
                if fname == "name" and tok.kind == "string" and _unquote(tok.text) == model:
                    return cfirst, cend - 1
    return None


def _label_value_token(toks: list[_Tok], opener: int, closer: int, label: str) -> int | None:
    """The index of the ``value`` token of ``label``'s ``version_labels`` entry, if there is one."""
    for fname, ffirst, fend in _fields(toks, opener + 1, closer):
        if fname != "version_labels":
            continue
        entry = {n: f for n, f, _ in _fields(toks, ffirst + 1, fend - 1)}
        key = toks[entry["key"]] if "key" in entry else None
        if key is not None and key.kind == "string" and _unquote(key.text) == label and "value" in entry:
            return entry["value"]
    return None


def _line_indent(text: str, offset: int) -> tuple[int, str]:
    """The start of the line holding ``offset`` and the line's leading whitespace."""
    start = text.rfind("\n", 0, offset) + 1
    line = text[start:offset]
    return start, line[: len(line) - len(line.lstrip(" \t"))]


def set_version_label(
    text: str, *, model: str, label: str, version: int, source: str = "models.config"
) -> tuple[str, int | None]:
    """``text`` with ``model``'s ``label`` pointing at ``version``, and the label's previous version.

    Only the label's ``value`` token changes; every comment, quote style and the layout are kept
    byte for byte. When the model has no such label, one ``version_labels { key: '...' value: N }``
    entry is added as the last field of its ``config`` (on its own line, indented like the
    model's first field, when the closing brace has a line of its own). Pure; idempotent.

    Returns:
        The new text and the version the label named before (``None``: it was absent).

    Raises:
        ConfigError: ``text`` is not a valid models.config, declares no model ``model``, the label
            is not a valid TF Serving label, or ``version`` is negative.
    """
    check_version_label(label)
    if version < 0:
        raise ConfigError(source, [f"version must be >= 0, got {version}"])
    models = parse_models_config(text, source=source)
    current = next((m for m in models if m.name == model), None)
    if current is None:
        raise ConfigError(source, [f"declares no model {model!r} (declared: {[m.name for m in models]})"])
    previous = current.labels.get(label)
    toks = _tokens(text, source)
    body = _model_body(toks, model)
    if body is None:  # pragma: no cover - parse_models_config found the model
        raise ConfigError(source, [f"model {model!r} not found"])
    opener, closer = body
    value = _label_value_token(toks, opener, closer, label)
    if value is not None:
        tok = toks[value]
        new = text[: tok.start] + str(version) + text[tok.start + len(tok.text) :]
    else:
        entry = f"version_labels {{ key: '{label}' value: {version} }}"
        close = toks[closer]
        line_start, close_indent = _line_indent(text, close.start)
        if text[line_start : close.start].strip() == "":
            first = toks[opener + 1] if opener + 1 < closer else None
            if first is not None and first.line != toks[opener].line:
                indent = _line_indent(text, first.start)[1]
            else:
                indent = close_indent + "  "
            new = text[:line_start] + f"{indent}{entry}\n" + text[line_start:]
        else:
            pad = "" if text[close.start - 1].isspace() else " "
            new = text[: close.start] + f"{pad}{entry} " + text[close.start :]
    check = next(m for m in parse_models_config(new, source=source) if m.name == model)
    if check.labels.get(label) != version:  # pragma: no cover - a bug in this writer
        raise ConfigError(source, [f"rewriting label {label!r} did not take effect"])
    return new, previous
