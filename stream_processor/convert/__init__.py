"""Convert ordinary OCI images (tar layers) into images whose layers are EROFS.

Split by concern:

- ``oci``: OCI image layouts read (a directory or an ``oci-archive`` tar,
  every blob verified) and written, and platforms (``Platform``).
- ``tarstream``: a lean streaming tar reader (ustar, GNU, PAX).
- ``namespace``: the rules each entry of an untrusted tar layer must obey
  (no escapes, no duplicates, hard links to earlier entries, a byte budget).
- ``tarmode``: the ``tar`` builder: the tar streamed into
  ``mkfs.erofs --tar=f --aufs`` (erofs-utils >= 1.8), each header checked.
- ``tarlayer``: the ``dir`` builder's first half: one tar layer applied to an
  empty private directory with the semantics of an overlay layer (OCI
  whiteouts become overlayfs whiteouts).
- ``erofsbuild``: finding ``mkfs.erofs`` and its version, running it
  reproducibly on a directory (for ``pack`` too), fixing the superblock's
  time and UUID.
- ``layers``: one layer end to end (blob -> builder -> ``pack``), or an EROFS
  layer re-wrapped.
- ``converter``: the orchestration: the plan of the image, layers converted in
  forked workers, manifests, configs and the index rewritten, a typed report.
- ``progress``: what is printed while converting.

Nothing here is imported on the decode path.
"""
