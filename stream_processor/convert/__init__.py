"""Convert ordinary OCI images (tar layers) into images whose layers are EROFS.

Split by concern:

- ``oci``: reading OCI image layouts (a directory or an ``oci-archive`` tar),
  walking index -> manifest -> config, and writing the converted layout.
- ``tarstream``: a lean streaming tar reader (ustar, GNU, PAX).
- ``tarlayer``: applying one tar layer to an empty private directory with the
  semantics of an overlay layer (OCI whiteouts become overlayfs whiteouts),
  refusing entries that would escape that directory.
- ``erofsbuild``: running ``mkfs.erofs`` reproducibly on such a directory.
- ``layers``: one layer end to end (blob -> unpack -> mkfs -> ``pack``), or an
  EROFS layer re-wrapped.
- ``converter``: the orchestration: layers converted concurrently, manifests,
  configs and the index rewritten, a per-layer report.
- ``progress``: what is printed while converting.

Nothing here is imported on the decode path.
"""
