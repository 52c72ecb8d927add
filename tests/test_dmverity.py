"""Seekable layers as containerd's seekable-EROFS code reads them, with dm-verity data.

``containerd_read`` (tests/containerd_reader.py) applies the rules of containerd's table reader (PR
12764, ``internal/erofsutils/seekable``: ``ReadChunkTable``, ``FrameBounds``,
``DecodeErofsFrame``; docs/seekable.md), written from those rules: the chunk
table is found through the annotation, its payload must match the
``chunk_digest`` annotation when one is given (only the ``sha512:`` form), the
header must be sane (a known hash algorithm, chunk size above 0), the payload
size must equal 23 + n x (8 + hash size), frame i spans [offset_i, offset_i+1)
(the last ends at the table) and must not be empty, each frame's SHA-512 must
match, and the decoded bytes must hash to the diff_id. It models those
functions, not what containerd's differ does when it applies a layer: per the
fact-check of that PR, the differ decodes the whole blob with ``DecodeErofsAll``
(one zstd stream, skippable frames skipped) and never reads the table, so a
layer that fails this reader may still apply there; passing it is the stronger
claim. The dm-verity frame is read at ``dmverity.offset`` and
handed to Debian's ``veritysetup``, the tool of the field: ``dump`` must read
our superblock and ``verify`` must accept image, tree and root digest, and
refuse a flipped byte in any of them. Mount-time verification needs
device-mapper, which the kernel of the test machines lacks, so no test opens
a verity device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stream_processor import dmverity, seekable
from tests.builders import pack_bytes
from tests.containerd_reader import RefusedByReader, containerd_read, skippable_payload
from tests.processor import run_cli


def verity_payload(blob: bytes, annotations: dict[str, str]) -> bytes:
    return skippable_payload(blob, int(annotations[seekable.ANNOTATION_VERITY_OFFSET]))


def veritysetup() -> str:
    path = shutil.which("veritysetup")
    if path is None:
        pytest.skip("veritysetup is not installed (Debian package cryptsetup-bin)")
    return path


def pack_cli(image: Path, out: Path, *extra: str) -> dict[str, Any]:
    proc = run_cli(["pack", str(image), "-o", str(out), "--json", *extra])
    assert proc.returncode == 0, proc.stderr.decode()
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


def _json_field(record: dict[str, Any], snake: str, camel: str) -> Any:
    """pack --json keys (another change moves them to snake_case; accept both)."""
    return record[snake] if snake in record else record[camel]


@pytest.fixture(scope="module")
def layer(erofs_image: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any]:
    out = tmp_path_factory.mktemp("verity") / "layer.blob"
    record = pack_cli(erofs_image, out, "--dm-verity", "--chunk-size", "16KiB")
    return out.read_bytes(), record


def test_layer_passes_containerds_reader(layer: tuple[bytes, Any], erofs_bytes: bytes) -> None:
    blob, record = layer
    annotations = record["annotations"]
    assert annotations[seekable.ANNOTATION_TABLE_DIGEST].startswith("sha512:")
    diff_id = _json_field(record, "diff_id", "diffID")
    assert containerd_read(blob, annotations, diff_id) == erofs_bytes
    # the dm-verity frame comes right after the chunk table, and ends the blob
    table_offset = int(annotations[seekable.ANNOTATION_TABLE_OFFSET])
    verity_offset = int(annotations[seekable.ANNOTATION_VERITY_OFFSET])
    assert verity_offset == table_offset + 8 + len(skippable_payload(blob, table_offset))
    assert verity_offset + 8 + len(verity_payload(blob, annotations)) == len(blob)
    assert blob[verity_offset : verity_offset + 4] == (0x184D2A50).to_bytes(4, "little")


def test_the_reader_refuses_the_old_sha256_form(
    layer: tuple[bytes, Any], erofs_bytes: bytes
) -> None:
    blob, record = layer
    annotations = dict(record["annotations"])
    payload = skippable_payload(blob, int(annotations[seekable.ANNOTATION_TABLE_OFFSET]))
    annotations[seekable.ANNOTATION_TABLE_DIGEST] = "sha256:" + hashlib.sha256(payload).hexdigest()
    with pytest.raises(RefusedByReader, match="only sha512"):
        containerd_read(blob, annotations, _json_field(record, "diff_id", "diffID"))
    # ours still accepts it, and says which form it found
    assert seekable.check_table_digest(payload, annotations[seekable.ANNOTATION_TABLE_DIGEST]) == (
        "sha256"
    )


def test_the_reader_checks_the_digest_only_when_given(layer: tuple[bytes, Any]) -> None:
    """containerd's ``chunk_digest`` is optional; without it an unknown hash algorithm in
    the header is still refused (as the reader's error, not a crash of the model)."""
    blob, record = layer
    diff_id = _json_field(record, "diff_id", "diffID")
    annotations = dict(record["annotations"])
    del annotations[seekable.ANNOTATION_TABLE_DIGEST]
    containerd_read(blob, annotations, diff_id)
    at = int(annotations[seekable.ANNOTATION_TABLE_OFFSET]) + 8 + 20  # the hash algo byte
    forged = bytearray(blob)
    forged[at] = 2
    with pytest.raises(RefusedByReader, match="unknown chunk table hash algo 2"):
        containerd_read(bytes(forged), annotations, diff_id)


def test_veritysetup_dump_and_verify(
    layer: tuple[bytes, Any], erofs_bytes: bytes, tmp_path: Path
) -> None:
    tool = veritysetup()
    blob, record = layer
    annotations = record["annotations"]
    payload = verity_payload(blob, annotations)
    tree = tmp_path / "tree.bin"
    tree.write_bytes(payload)
    data = tmp_path / "image.erofs"
    data.write_bytes(erofs_bytes)
    dump = subprocess.run([tool, "dump", str(tree)], capture_output=True, text=True, check=True)
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in dump.stdout.splitlines())
    )
    assert fields["Hash type"] == "1"
    assert fields["Hash algorithm"] == "sha512"
    assert fields["Data block size"] == fields["Hash block size"] == "4096"
    assert fields["Data blocks"] == str(len(erofs_bytes) // 4096)
    assert fields["Salt"] == dmverity.derive_salt(erofs_bytes).hex()
    root = annotations[seekable.ANNOTATION_VERITY_ROOT]
    assert root.startswith("sha512:")
    ok = subprocess.run([tool, "verify", str(data), str(tree), root[7:]], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    # containerd's differ appends the payload to layer.erofs at a block boundary
    single = tmp_path / "layer.erofs"
    padded = erofs_bytes + bytes(-len(erofs_bytes) % 4096)
    single.write_bytes(padded + payload)
    ok = subprocess.run(
        [tool, "verify", str(single), str(single), root[7:], f"--hash-offset={len(padded)}"],
        capture_output=True,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("part", ["image", "tree", "root"])
def test_veritysetup_refuses_a_flipped_byte(
    layer: tuple[bytes, Any], erofs_bytes: bytes, tmp_path: Path, part: str
) -> None:
    tool = veritysetup()
    blob, record = layer
    payload = bytearray(verity_payload(blob, record["annotations"]))
    image = bytearray(erofs_bytes)
    root = record["annotations"][seekable.ANNOTATION_VERITY_ROOT][7:]
    if part == "image":
        image[len(image) // 2] ^= 1
    elif part == "tree":
        payload[4096 + 100] ^= 1
    else:
        root = ("0" if root[0] != "0" else "1") + root[1:]
    (tmp_path / "d").write_bytes(image)
    (tmp_path / "t").write_bytes(payload)
    proc = subprocess.run(
        [tool, "verify", str(tmp_path / "d"), str(tmp_path / "t"), root], capture_output=True
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("block_size", [512, 1024, 2048, 4096])
def test_tree_is_what_veritysetup_format_writes(
    erofs_bytes: bytes, tmp_path: Path, block_size: int
) -> None:
    """Same salt and UUID: ``veritysetup format`` writes byte for byte our payload."""
    tool = veritysetup()
    blob, result = pack_bytes(erofs_bytes, dm_verity_block_size=block_size, threads=2)
    ours = verity_payload(blob, result.annotations)
    sb = dmverity.parse_superblock(ours)
    (tmp_path / "d").write_bytes(erofs_bytes + bytes(-len(erofs_bytes) % block_size))
    proc = subprocess.run(
        [
            tool,
            "format",
            str(tmp_path / "d"),
            str(tmp_path / "t"),
            "--hash=sha512",
            f"--data-block-size={block_size}",
            f"--hash-block-size={block_size}",
            f"--salt={sb.salt.hex()}",
            f"--uuid={sb.uuid_str}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "t").read_bytes() == ours
    root = next(ln for ln in proc.stdout.splitlines() if ln.startswith("Root hash"))
    assert result.annotations[seekable.ANNOTATION_VERITY_ROOT] == "sha512:" + root.split()[-1]


def test_one_block_image_has_no_hash_blocks() -> None:
    """One data block: the root is that block's hash and the hash area is empty (as cryptsetup)."""
    builder = dmverity.TreeBuilder(b"salt")
    builder.update(b"x" * 100)
    tree, root = builder.finish()
    assert tree == b""
    assert root == hashlib.sha512(b"salt" + b"x" * 100 + bytes(4096 - 100)).digest()


def test_same_bytes_for_any_thread_count_and_run(erofs_image: Path, tmp_path: Path) -> None:
    a = pack_cli(erofs_image, tmp_path / "a", "--dm-verity", "--threads", "1")
    b = pack_cli(erofs_image, tmp_path / "b", "--dm-verity", "--threads", "2")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert a["annotations"] == b["annotations"]


def _swap_tree(blob: bytes, annotations: dict[str, str], other: bytes) -> bytes:
    """``blob`` with the dm-verity frame of another image of the same size."""
    blob_b, result = pack_bytes(other, dm_verity_block_size=4096)
    theirs = verity_payload(blob_b, result.annotations)
    at = int(annotations[seekable.ANNOTATION_VERITY_OFFSET])
    return blob[:at] + seekable.skippable_frame(theirs)


def _other_image(image: bytes) -> bytes:
    """The same image with one byte changed past the superblock block (still valid EROFS)."""
    changed = bytearray(image)
    changed[len(image) - 4096 + 10] ^= 0xFF
    return bytes(changed)


def test_decoder_refuses_a_tree_that_is_not_the_images(
    layer: tuple[bytes, Any], erofs_bytes: bytes
) -> None:
    blob, record = layer
    forged = _swap_tree(blob, record["annotations"], _other_image(erofs_bytes))
    for args, env in (
        (["--verify-dm-verity"], {}),
        (["--verify-dm-verity", "--threads", "2"], {}),
        ([], {"EROFS_SP_VERIFY_DM_VERITY": "1"}),
    ):
        proc = run_cli(args, forged, env=env)
        assert proc.returncode == 65, proc.stderr
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1
        assert "dm-verity: hash tree level 0, block" in lines[0]
        assert "does not match the image" in lines[0]
        assert len(proc.stdout) < len(erofs_bytes)  # the held-back tail was not released
    # without the flag only the superblock is checked, and it fits
    plain = run_cli([], forged)
    assert plain.returncode == 0 and plain.stdout == erofs_bytes
    good = run_cli(["--verify-dm-verity"], blob)
    assert good.returncode == 0 and good.stdout == erofs_bytes


def test_decoder_refuses_a_flipped_tree_byte(layer: tuple[bytes, Any], erofs_bytes: bytes) -> None:
    blob, record = layer
    at = int(record["annotations"][seekable.ANNOTATION_VERITY_OFFSET]) + 8 + 4096 + 5
    forged = bytearray(blob)
    forged[at] ^= 1
    proc = run_cli(["--verify-dm-verity"], bytes(forged))
    assert proc.returncode == 65
    assert b"dm-verity: hash tree level" in proc.stderr
    assert len(proc.stdout) < len(erofs_bytes)


def test_superblock_is_always_checked(layer: tuple[bytes, Any], erofs_bytes: bytes) -> None:
    """No flag needed: a superblock that does not fit the image is exit 65."""
    blob, record = layer
    at = int(record["annotations"][seekable.ANNOTATION_VERITY_OFFSET]) + 8
    cases = {
        72: (struct.pack("<Q", len(erofs_bytes) // 4096 + 1), "covers"),  # data blocks
        32: (b"md4\0", "unknown hash algorithm"),
        64: (struct.pack("<I", 3000), "data block size 3000"),
    }
    for field, (value, words) in cases.items():
        forged = bytearray(blob)
        forged[at + field : at + field + len(value)] = value
        proc = run_cli([], bytes(forged))
        assert proc.returncode == 65, (field, proc.stderr)
        assert len(proc.stderr.decode().strip().splitlines()) == 1
        assert words in proc.stderr.decode()
        assert len(proc.stdout) < len(erofs_bytes)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--dm-verity-block-size", "1000"], "dm-verity block size 1000 is not one of"),
        (["--dm-verity", "--compression", "gzip"], "--dm-verity needs the seekable zstd layout"),
        (["--dm-verity", "--no-chunk-table"], "--dm-verity needs the seekable zstd layout"),
    ],
)
def test_pack_usage_errors(erofs_image: Path, tmp_path: Path, extra: list[str], words: str) -> None:
    out = tmp_path / "out.blob"
    proc = run_cli(["pack", str(erofs_image), "-o", str(out), *extra])
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
    assert not out.exists() and os.listdir(tmp_path) == []


def _layer_descriptors(layout: Path) -> list[tuple[dict[str, Any], str]]:
    """(layer descriptor, diff_id) of every EROFS layer in a converted layout."""

    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())

    found = []
    pending = [json.loads((layout / "index.json").read_text())]
    while pending:
        node = pending.pop()
        for desc in node.get("manifests", []):
            doc = blob(desc["digest"])
            if "manifests" in doc:
                pending.append(doc)
                continue
            diff_ids = blob(doc["config"]["digest"])["rootfs"]["diff_ids"]
            found += list(zip(doc["layers"], diff_ids, strict=True))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="converting keeps owners: needs root")
def test_convert_dm_verity_is_reproducible_and_readable(sample_tree: Path, tmp_path: Path) -> None:
    from tests.oci_builder import Image, build_layout, tar_tree

    src = build_layout(tmp_path / "src", [Image([tar_tree(sample_tree)], "gzip")])
    outs = []
    for name in ("a", "b"):
        dst = tmp_path / name
        proc = run_cli(
            ["convert", str(src), str(dst), "--dm-verity", "--chunk-size", "16KiB", "-q"],
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        outs.append(dst)
    assert (outs[0] / "index.json").read_bytes() == (outs[1] / "index.json").read_bytes()
    layers = _layer_descriptors(outs[0])
    assert layers
    for desc, diff_id in layers:
        annotations = desc["annotations"]
        blob = (outs[0] / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
        assert blob == (outs[1] / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
        image = containerd_read(blob, annotations, diff_id)
        sb = dmverity.parse_superblock(verity_payload(blob, annotations))
        assert sb.salt == dmverity.derive_salt(image)
        assert annotations[seekable.ANNOTATION_VERITY_ROOT].startswith("sha512:")


def test_convert_dm_verity_needs_the_seekable_layout(tmp_path: Path) -> None:
    proc = run_cli(
        [
            "convert",
            str(tmp_path / "src"),
            str(tmp_path / "dst"),
            "--dm-verity",
            "--compression",
            "gzip",
        ]
    )
    assert proc.returncode == 2
    assert "--dm-verity needs the seekable zstd layout" in proc.stderr.decode()
    assert not (tmp_path / "dst").exists()


def test_verify_flag_without_a_frame_passes_and_says_so(
    erofs_image: Path, erofs_bytes: bytes, tmp_path: Path
) -> None:
    pack_cli(erofs_image, tmp_path / "plain.blob")
    log = tmp_path / "sp.log"
    proc = run_cli(
        ["--verify-dm-verity", "--log-file", str(log), "--log-level", "info"],
        (tmp_path / "plain.blob").read_bytes(),
    )
    assert proc.returncode == 0 and proc.stdout == erofs_bytes
    record = json.loads(log.read_text().splitlines()[-1])
    assert "--verify-dm-verity: the layer has no dm-verity frame to verify" in record["notes"]


def _set_chunk_digests(layout: Path, form: str) -> None:
    """Rewrite ``layout``'s layer annotations to ``form`` ("sha256", the older one, or "bad")."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = index["manifests"]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    assert "layers" in manifest  # index.json lists the manifest itself
    for desc in manifest["layers"]:
        blob = (blobs / desc["digest"].split(":")[1]).read_bytes()
        payload = skippable_payload(
            blob, int(desc["annotations"][seekable.ANNOTATION_TABLE_OFFSET])
        )
        value = "sha256:" + hashlib.sha256(payload).hexdigest()
        if form == "bad":
            value = "sha512:" + "0" * 128
        desc["annotations"][seekable.ANNOTATION_TABLE_DIGEST] = value
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    entry["digest"], entry["size"] = f"sha256:{digest}", len(data)
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.skipif(os.geteuid() != 0, reason="converting keeps owners: needs root")
def test_convert_rewrap_checks_the_chunk_digest_in_both_forms(
    sample_tree: Path, tmp_path: Path
) -> None:
    from tests.oci_builder import Image, build_layout, tar_tree

    src = build_layout(tmp_path / "src", [Image([tar_tree(sample_tree)], "gzip")])
    first = tmp_path / "first"
    assert run_cli(["convert", str(src), str(first), "-q"], timeout=240).returncode == 0
    for form in ("sha512", "sha256"):
        if form == "sha256":
            _set_chunk_digests(first, "sha256")
        out = tmp_path / f"again-{form}"
        proc = run_cli(["convert", str(first), str(out), "--json", "-q"], timeout=240)
        assert proc.returncode == 0, proc.stderr.decode()
        layers = json.loads(proc.stdout)["layers"]
        assert [row["kind"] for row in layers] == ["rewrapped"]
        assert [row["source_chunk_digest"] for row in layers] == [form]
    _set_chunk_digests(first, "bad")
    out = tmp_path / "again-bad"
    proc = run_cli(["convert", str(first), str(out), "-q"], timeout=240)
    assert proc.returncode == 65
    line = proc.stderr.decode().strip()
    assert len(line.splitlines()) == 1
    assert "chunk_digest annotation (sha512) does not match the chunk table" in line
    assert not out.exists()
