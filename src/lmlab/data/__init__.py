"""Data components: the corpus registry (files, checksums, downloads), vocabularies and batching."""
