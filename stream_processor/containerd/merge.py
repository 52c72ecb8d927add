"""``config --merge``: put the registration into an existing containerd ``config.toml``.

The parsed document is edited with tomlkit, so the operator's comments, key
order and other settings survive, and only the keys the rendered snippet sets
are touched (the snippet is parsed; its keys are the targets). A key the
operator set differently is a conflict, changed only with ``force``; one
holding containerd's built-in default (``containerd config default`` spells
them all out) is no choice of theirs and is updated like a missing one.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT, Table, Whitespace

from stream_processor.containerd.configfile import parse_config, toml_string
from stream_processor.containerd.names import (
    CRI_IMAGES,
    DIFF_SERVICE,
    EROFS_NODE_PLUGINS,
    PROCESSOR_ID,
    TRANSFER,
)
from stream_processor.containerd.render import SnippetOptions, render
from stream_processor.containerd.versions import Profile
from stream_processor.errors import (
    DataError,
    ProcessorError,
)

EXIT_CONFLICT = 1

# containerd's built-in values for the keys the snippet sets (plugins/*/plugin.go):
# a file holding one of these has not chosen anything, whatever it spells out.
CONTAINERD_DEFAULTS: dict[tuple[str, str], Any] = {
    (CRI_IMAGES, "snapshotter"): "overlayfs",
    (DIFF_SERVICE, "default"): ["walking"],
    (TRANSFER, "max_concurrent_unpacks"): 1,
}


class MergeConflict(ProcessorError):
    """The operator set values the registration needs differently; ``--force`` changes them."""

    exit_code = EXIT_CONFLICT
    reason = "conflict"


@dataclass(frozen=True)
class Change:
    """One key the merge adds or changes; ``conflict`` marks an operator's own value."""

    where: str
    old: Any
    new: Any
    line: int | None = None
    conflict: bool = False

    def describe(self) -> str:
        at = f"line {self.line}: " if self.line else ""
        if self.old is None:
            if self.new == {}:
                return f"{at}add table {self.where}"
            sep = " " if isinstance(self.new, dict) else " = "
            return f"{at}add {self.where}{sep}{_show(self.new)}"
        return f"{at}{self.where} = {_show(self.old)} -> {_show(self.new)}"


@dataclass
class MergeResult:
    """The file before and after, and what changed between them."""

    source: str
    before: str
    after: str
    changes: list[Change] = field(default_factory=list)

    @property
    def conflicts(self) -> list[Change]:
        return [c for c in self.changes if c.conflict]

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                fromfile=self.source,
                tofile=f"{self.source} (merged)",
            )
        )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "unset"
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- locating lines


def _header_path(line: str) -> tuple[str, ...] | None:
    """``[plugins.'x']`` / ``[[a."b".c]]`` -> its key path (quoting resolved by tomllib)."""
    stripped = line.strip()
    if not stripped.startswith("["):
        return None
    try:
        node: Any = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None  # e.g. a line of a multi-line array
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
        if isinstance(node, list):
            node = node[-1] if node else None
    return tuple(path)


def _key_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped[0] in "#[" or "=" not in stripped:
        return None
    raw = stripped.split("=", 1)[0].strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def line_of(text: str, table: tuple[str, ...], key: str | None = None, nth: int = 0) -> int | None:
    """The 1-based line of ``key`` in ``table`` (or of the table's header), else None.

    ``nth`` picks the n-th table of an array of tables. Used only to name the
    line of a conflict; a key written as a dotted key elsewhere is not found.
    """
    current: tuple[str, ...] | None = ()
    seen = 0 if table == () else -1  # the root table has no header
    for number, line in enumerate(text.splitlines(), start=1):
        header = _header_path(line)
        if header is not None:
            current = header
            if header == table:
                seen += 1
                if key is None and seen == nth:
                    return number
            continue
        if key is not None and current == table and seen == nth and _key_of(line) == key:
            return number
    return None


# ---------------------------------------------------------------- merging


def parse(text: str, source: str) -> tuple[dict[str, Any], tomlkit.TOMLDocument]:
    """Both views of ``text``: plain values (tomllib) and the editable document (tomlkit)."""
    plain = parse_config(text, source)
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise DataError(f"{source} is not valid TOML: {exc}") from exc
    return plain, doc


def check_version(plain: Mapping[str, Any], profile: Profile, source: str) -> bool:
    """Refuse a file of another config version; True if the file has no keys at all yet."""
    if not plain:
        return True
    found = plain.get("version", 1)  # containerd reads a file without one as version 1
    accepted = profile.config_versions
    if not isinstance(found, int) or found < min(accepted):
        how = (
            "run `containerd config migrate` (containerd 2.x) and merge into its output"
            if profile.config_version >= 3
            else "rewrite it in the version 2 layout `containerd config default` prints"
        )
        raise DataError(
            f"{source} is a version {found} config, but {profile.label} needs version "
            f"{profile.config_version} plugin names; {how}"
        )
    if found > max(accepted):
        raise DataError(
            f"{source} is a version {found} config, newer than {profile.label} reads "
            f"(version {max(accepted)}); check --containerd-version"
        )
    return False


class _Merger:
    """Applies the snippet's keys to one document, recording each change."""

    def __init__(
        self, text: str, doc: tomlkit.TOMLDocument, snippet: tomlkit.TOMLDocument, force: bool
    ) -> None:
        self.text = text
        self.doc = doc
        self.snippet = snippet
        self.force = force
        self.changes: list[Change] = []

    @property
    def conflicts(self) -> list[Change]:
        return [c for c in self.changes if c.conflict]

    def record(self, change: Change) -> bool:
        """Note ``change``; True if it is to be applied (not a conflict, or forced)."""
        self.changes.append(change)
        return not change.conflict or self.force

    def table(self, *keys: str) -> Table:
        """The table at ``keys``; a missing one is copied from the snippet (its layout too)."""
        node: Any = self.doc
        model: Any = self.snippet
        for depth, key in enumerate(keys):
            model = model.get(key) if model is not None and key in model else None
            if key not in node:
                fresh = model if isinstance(model, Table) else tomlkit.table()
                _trim(fresh)
                _add(node, key, fresh)
            child = node[key]
            if not isinstance(child, Table):
                raise DataError(
                    f"{'.'.join(keys[: depth + 1])} is not a table in this file; "
                    "the registration cannot be merged into it"
                )
            node = child
        assert isinstance(node, Table)
        return node

    def put(self, table_path: tuple[str, ...], key: str, value: Any) -> None:
        """Set ``key``: in place if present, else after the table's last key, same indent."""
        table = self.table(*table_path)
        if key in table:
            table[key] = value
        else:
            _add(table, key, value)

    def set_key(
        self,
        table_path: tuple[str, ...],
        key: str,
        new: Any,
        current: Any,
        resolve: Callable[[Any, Any], tuple[Any, bool]] | None = None,
    ) -> None:
        """Set ``key`` in ``table_path`` to ``new`` unless it already satisfies the snippet.

        ``resolve(old, new)`` returns the value to write (``old`` itself to keep
        it) and whether writing anything else would override an operator's choice.
        """
        where = _where(table_path, key)
        if current is None:
            self.record(Change(where, None, new))
            self.put(table_path, key, new)
            return
        if current == new:
            return
        wanted, conflict = resolve(current, new) if resolve else (new, True)
        if wanted == current:
            return
        if CONTAINERD_DEFAULTS.get((table_path[-1], key)) == current:
            conflict = False
        line = line_of(self.text, table_path, key)
        if self.record(Change(where, current, wanted, line, conflict)):
            self.table(*table_path)[key] = wanted


def _trim(table: Table) -> None:
    """Drop the comments that end a table copied from the snippet, then one blank line.

    In the snippet they introduce the next table, which may already be in the
    operator's file or land elsewhere; left in place they would describe the wrong table.
    """
    body = table.value.body
    while body and body[-1][0] is None:
        body.pop()
    if body and isinstance(body[-1][1], Table):
        _trim(body[-1][1])
    else:
        body.append((None, Whitespace("\n")))


def _add(container: Any, key: str, value: Any) -> None:
    """Append ``key`` before the container's trailing blank lines, indented like its siblings."""
    body = container.value.body if isinstance(container, Table) else container.body
    trailing: list[Any] = []
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
        trailing.insert(0, body.pop())
    indents = [
        item.trivia.indent
        for k, item in body
        if k is not None and not isinstance(item, Table | AoT) and hasattr(item, "trivia")
    ]
    if isinstance(value, Table | AoT) and body and not isinstance(body[-1][1], Whitespace):
        last = body[-1][1]
        while (
            isinstance(last, Table)
            and last.value.body
            and isinstance(last.value.body[-1][1], Table)
        ):
            last = last.value.body[-1][1]  # a super table ends where its last child ends
        if isinstance(last, Table):
            if not last.value.body or not isinstance(last.value.body[-1][1], Whitespace):
                last.value.body.append((None, Whitespace("\n")))
        else:
            body.append((None, Whitespace("\n")))
    container.append(key, value)
    added = container[key]
    if indents and not isinstance(added, Table | AoT):
        added.trivia.indent = indents[-1]
    body.extend(trailing)


def _where(table_path: tuple[str, ...], key: str) -> str:
    header = ".".join(
        p if p.replace("_", "").replace("-", "").isalnum() else toml_string(p) for p in table_path
    )
    return f"[{header}] {key}"


def _diff_order(old: Any, new: Any) -> tuple[Any, bool]:
    """Any list that tries erofs before walking will do; otherwise put erofs first."""
    if (
        isinstance(old, list)
        and "erofs" in old
        and ("walking" not in old or old.index("erofs") < old.index("walking"))
    ):
        return old, False
    rest = [d for d in old if d != "erofs"] if isinstance(old, list) else []
    return ["erofs", *rest] if rest else new, True


def _at_least(old: Any, new: Any) -> tuple[Any, bool]:
    """More parallel unpacks than the snippet's are the operator's to keep."""
    if isinstance(old, int) and not isinstance(old, bool) and old >= new:
        return old, False
    return new, True


def merge(
    text: str,
    options: SnippetOptions,
    source: str = "config.toml",
    force: bool = False,
) -> MergeResult:
    """``text`` with the registration for ``options`` merged in (nothing is written).

    Raises ``DataError`` for a file that does not parse or has another config
    version, and ``MergeConflict`` naming every conflicting key and its line
    unless ``force``.
    """
    plain, doc = parse(text, source)
    profile = options.profile
    empty = check_version(plain, profile, source)
    rendered = render(options)
    snippet = tomllib.loads(rendered)
    m = _Merger(text, doc, tomlkit.parse(rendered), force)
    if empty:
        doc.add("version", profile.config_version)
        m.changes.append(Change("version", None, profile.config_version))
    _merge_processor(m, plain, snippet["stream_processors"][PROCESSOR_ID])
    if profile.erofs_plugins:
        _merge_disabled(m, plain)
        _merge_plugins(m, plain, snippet["plugins"])
    if m.conflicts and not force:
        raise MergeConflict(
            f"{source}: {len(m.conflicts)} setting{'s' if len(m.conflicts) > 1 else ''} "
            "differ from what the registration needs (--force changes them): "
            + "; ".join(c.describe() for c in m.conflicts)
        )
    after = tomlkit.dumps(doc)
    try:
        tomllib.loads(after)
    except tomllib.TOMLDecodeError as exc:  # a tomlkit bug; never write such a file
        raise DataError(f"merging into {source} produced invalid TOML ({exc})") from exc
    return MergeResult(source, text, after, m.changes)


def _merge_processor(m: _Merger, plain: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
    """Our own entry is ours to update; another processor claiming a route is a conflict."""
    processors = plain.get("stream_processors")
    processors = processors if isinstance(processors, dict) else {}
    existing = processors.get(PROCESSOR_ID)
    existing = existing if isinstance(existing, dict) else {}
    table_path = ("stream_processors", PROCESSOR_ID)
    for key, value in entry.items():
        current = existing.get(key)
        if current != value:
            line = line_of(m.text, table_path, key) if current is not None else None
            m.record(Change(_where(table_path, key), current, value, line))
            m.put(table_path, key, value)
    for pid, other in processors.items():
        if pid == PROCESSOR_ID or not isinstance(other, dict):
            continue
        accepts = other.get("accepts")
        if not isinstance(accepts, list):
            continue
        taken = [mt for mt in accepts if mt in entry["accepts"]]
        if taken:
            kept = [mt for mt in accepts if mt not in taken]
            path = ("stream_processors", pid)
            line = line_of(m.text, path, "accepts")
            if m.record(Change(_where(path, "accepts"), accepts, kept, line, conflict=True)):
                m.table(*path)["accepts"] = kept


def _merge_disabled(m: _Merger, plain: Mapping[str, Any]) -> None:
    disabled = plain.get("disabled_plugins")
    if not isinstance(disabled, list):
        return
    kept = [p for p in disabled if p not in EROFS_NODE_PLUGINS]
    if kept != disabled:
        line = line_of(m.text, (), "disabled_plugins")
        if m.record(Change("disabled_plugins", disabled, kept, line, conflict=True)):
            m.doc["disabled_plugins"] = kept


def _merge_plugins(m: _Merger, plain: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    plugins = plain.get("plugins")
    plugins = plugins if isinstance(plugins, dict) else {}
    resolvers: dict[tuple[str, str], Callable[[Any, Any], tuple[Any, bool]]] = {
        (DIFF_SERVICE, "default"): _diff_order,
        (TRANSFER, "max_concurrent_unpacks"): _at_least,
    }
    for plugin, settings in wanted.items():
        current = plugins.get(plugin)
        current = current if isinstance(current, dict) else {}
        if plugin not in plugins:
            m.record(Change(_where(("plugins", plugin), "")[:-1], None, {}))
            m.table("plugins", plugin)
        for key, value in settings.items():
            if key == "unpack_config":
                _merge_unpack(m, current.get("unpack_config"), value)
                continue
            m.set_key(
                ("plugins", plugin), key, value, current.get(key), resolvers.get((plugin, key))
            )


def _merge_unpack(m: _Merger, current: Any, wanted: list[dict[str, Any]]) -> None:
    """One erofs/erofs entry per wanted platform; one pairing other plugins is a conflict."""
    path = ("plugins", TRANSFER, "unpack_config")
    where = "[" + _where(path, "")[:-1] + "]"
    existing = [u for u in current if isinstance(u, dict)] if isinstance(current, list) else []
    for entry in wanted:
        same = [i for i, u in enumerate(existing) if u.get("platform") == entry["platform"]]
        in_doc = m.table("plugins", TRANSFER).get("unpack_config")
        if not same and in_doc and any(u.get("platform") == entry["platform"] for u in in_doc):
            continue  # came with the table copied from the snippet
        if any(
            existing[i].get("snapshotter") == "erofs"
            and existing[i].get("differ", "erofs") == "erofs"
            for i in same
        ):
            continue
        if not same:
            m.record(Change(where, None, dict(entry)))
            table = m.table("plugins", TRANSFER)
            model = m.snippet["plugins"][TRANSFER]["unpack_config"]
            fresh = next(t for t in model if t["platform"] == entry["platform"])
            if "unpack_config" not in table:
                _add(table, "unpack_config", tomlkit.aot())
            aot = table["unpack_config"]
            assert isinstance(aot, AoT)
            if len(aot):  # parsed entries keep their indent as written
                fresh.trivia.indent = aot[0].trivia.indent
            else:  # tomlkit adds the parent table's indent to a new one
                keys = [i.trivia.indent for k, i in table.value.body if k and hasattr(i, "trivia")]
                base = keys[0] if keys else ""
                fresh.trivia.indent = base[len(table.trivia.indent) :] if base else ""
            aot.append(fresh)
            continue
        index = same[0]
        old = {k: existing[index].get(k) for k in ("snapshotter", "differ")}
        line = line_of(m.text, path, "snapshotter", nth=index) or line_of(m.text, path, None, index)
        label = f"{where} for {entry['platform']}"
        if m.record(Change(label, old, {"snapshotter": "erofs", "differ": "erofs"}, line, True)):
            aot = m.table("plugins", TRANSFER)["unpack_config"]
            aot[index]["snapshotter"] = "erofs"
            aot[index]["differ"] = "erofs"
