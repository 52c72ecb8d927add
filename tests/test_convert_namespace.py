"""``convert.namespace``: the rules for each entry of an untrusted tar layer, without a tar.

The builders' tests (test_convert_tarlayer, test_convert_tarmode) run the same
rules on real tars; these pin each rule and its message on plain ``Entry``s.
"""

from __future__ import annotations

import pytest

from stream_processor.convert import tarstream
from stream_processor.convert.namespace import Action, LayerNamespace, Plan, clean_name
from stream_processor.convert.tarstream import Entry
from stream_processor.errors import DataError


def entry(name: str, kind: bytes = tarstream.REGTYPE, size: int = 0, linkname: str = "") -> Entry:
    return Entry(name, kind, size, 0o644, 0, 0, 0.0, linkname, 0, 0)


def plans(*entries: Entry, max_bytes: int = 1 << 30) -> tuple[LayerNamespace, list[Plan]]:
    ns = LayerNamespace(max_bytes)
    return ns, [ns.plan(e) for e in entries]


def refused(*entries: Entry, max_bytes: int = 1 << 30) -> str:
    with pytest.raises(DataError) as caught:
        plans(*entries, max_bytes=max_bytes)
    return caught.value.message


@pytest.mark.parametrize(
    ("name", "rel"),
    [("./a//b/", "a/b"), (".", ""), ("./", ""), ("a/./b", "a/b"), ("a..b/..c", "a..b/..c")],
)
def test_clean_name(name: str, rel: str) -> None:
    assert clean_name(name) == rel


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/passwd", "tar entry '/etc/passwd' is an absolute path; refusing to unpack it"),
        ("a/../../b", "tar entry 'a/../../b' climbs out of the layer with '..'"),
        ("a\0b", "tar entry 'a\\x00b' contains a NUL byte"),
    ],
)
def test_clean_name_refuses_escapes(name: str, message: str) -> None:
    with pytest.raises(DataError) as caught:
        clean_name(name)
    assert caught.value.message == message


def test_each_type_gets_its_action_and_new_parents_are_listed_outermost_first() -> None:
    ns, got = plans(
        entry("./", tarstream.DIRTYPE),
        entry("a/b/file", size=5),
        entry("a/b/link", tarstream.SYMTYPE, linkname="file"),
        entry("a/b/hard", tarstream.LNKTYPE, linkname="./a/b/file"),
        entry("dev/null", tarstream.CHRTYPE),
        entry("a", tarstream.DIRTYPE),
        entry("fresh", tarstream.DIRTYPE),
    )
    assert got == [
        Plan(Action.DIRECTORY, "", (), new_dir=False),
        Plan(Action.FILE, "a/b/file", ("a", "a/b")),
        Plan(Action.SYMLINK, "a/b/link", ()),
        Plan(Action.HARDLINK, "a/b/hard", (), link_target="a/b/file"),
        Plan(Action.DEVICE, "dev/null", ("dev",)),
        Plan(Action.DIRECTORY, "a", (), new_dir=False),  # made earlier as a parent
        Plan(Action.DIRECTORY, "fresh", (), new_dir=True),
    ]
    assert (ns.stats.entries, ns.stats.file_bytes, ns.stats.hardlinks) == (7, 5, 1)


def test_whiteouts_opaque_and_aufs_metadata() -> None:
    ns, got = plans(
        entry("d/.wh.gone"),
        entry("d/.wh..wh..opq"),
        entry(".wh..wh.plnk"),
    )
    assert got == [
        Plan(Action.WHITEOUT, "d/gone", ("d",)),
        Plan(Action.OPAQUE, "d", ()),
        Plan(Action.IGNORE, "", ()),
    ]
    assert (ns.stats.whiteouts, ns.stats.opaque_dirs) == (1, 1)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("f"), entry("f")], "tar entry 'f' appears twice in the layer (duplicate entry)"),
        (
            [entry("d", tarstream.DIRTYPE), entry("./d/", tarstream.DIRTYPE)],
            "tar entry './d/' appears twice in the layer (duplicate entry)",
        ),
        (
            [entry("f"), entry("f", tarstream.DIRTYPE)],
            "tar entry 'f' appears twice in the layer (duplicate entry)",
        ),
        (
            [entry("l", tarstream.SYMTYPE, linkname="/etc"), entry("l/passwd")],
            "tar entry 'l/passwd' would be written through the symlink 'l'; refusing",
        ),
        (
            [entry("f"), entry("f/x")],
            "tar entry 'f/x' needs 'f' to be a directory, but it is not",
        ),
        (
            [entry("h", tarstream.LNKTYPE, linkname="later")],
            "tar entry 'h' is a hard link to 'later', which is not earlier in this layer",
        ),
        (
            [entry("d", tarstream.DIRTYPE), entry("h", tarstream.LNKTYPE, linkname="d")],
            "tar entry 'h' is a hard link to a directory; refusing",
        ),
        (
            [entry("h", tarstream.LNKTYPE, linkname="../x")],
            "tar hard link target of 'h': '../x' climbs out of the layer with '..'",
        ),
        (
            [entry("x"), entry(".wh.x")],
            "tar entry '.wh.x' whites out 'x', which this layer also adds (duplicate entry)",
        ),
        ([entry(".", tarstream.REGTYPE)], "tar entry '.' names the layer root but is not"),
        ([entry("s", b"S")], "tar entry 's' has an unsupported type b'S'"),
    ],
)
def test_refusals_name_the_entry(entries: list[Entry], message: str) -> None:
    assert refused(*entries).startswith(message)


def test_the_byte_budget_counts_declared_file_sizes() -> None:
    ns, _ = plans(entry("a", size=60), entry("b", size=40), max_bytes=100)
    assert ns.stats.file_bytes == 100
    message = refused(entry("a", size=60), entry("b", size=41), max_bytes=100)
    assert message == (
        "tar entry 'b' declares 41 bytes, more than the layer limit of 100 bytes allows"
    )


def test_a_refused_entry_is_not_recorded() -> None:
    ns = LayerNamespace()
    ns.plan(entry("f"))
    with pytest.raises(DataError):
        ns.plan(entry("f"))
    assert ns.stats.entries == 1
