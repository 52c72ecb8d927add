"""The plugin and processor IDs a containerd config.toml names."""

from __future__ import annotations

PROCESSOR_ID = "io.containerd.processor.v1.erofs"

DIFF_SERVICE = "io.containerd.service.v1.diff-service"
EROFS_DIFFER = "io.containerd.differ.v1.erofs"
EROFS_SNAPSHOTTER = "io.containerd.snapshotter.v1.erofs"
TRANSFER = "io.containerd.transfer.v1.local"
CRI_IMAGES = "io.containerd.cri.v1.images"

# What an EROFS node needs loaded (``check`` and ``merge`` keep them out of disabled_plugins).
EROFS_NODE_PLUGINS = (EROFS_SNAPSHOTTER, EROFS_DIFFER, DIFF_SERVICE, TRANSFER)
