"""Convert ordinary OCI images (tar layers) into images whose layers are EROFS.

Split by concern:

- ``oci``: reading OCI image layouts (a directory or an ``oci-archive`` tar),
  walking index -> manifest -> config, and writing the converted layout.
- ``tarstream``: a lean streaming tar reader (ustar, GNU, PAX).
- ``namespace``: the rules each entry of an untrusted tar layer must obey
  (no escapes, no duplicates, hard links to earlier entries, a byte budget).
- ``tarmode``: the ``tar`` builder: the tar streamed into
  ``mkfs.erofs --tar=f --aufs`` (erofs-utils >= 1.8), each header checked.
- ``tarlayer``: the ``dir`` builder's first half: one tar layer applied to an
  empty private directory with the semantics of an overlay layer (OCI
  whiteouts become overlayfs whiteouts).
- ``erofsbuild``: finding ``mkfs.erofs`` and its version, running it
  reproducibly on such a directory, fixing the superblock's time and UUID.
- ``layers``: one layer end to end (blob -> builder -> ``pack``), or an EROFS
  layer re-wrapped.
- ``converter``: the orchestration: layers converted concurrently, manifests,
  configs and the index rewritten, a per-layer report.
- ``progress``: what is printed while converting.

Nothing here is imported on the decode path.
"""
