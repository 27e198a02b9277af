"""Images and datasets: image sources and import, decoding, export snapshots on disk."""
