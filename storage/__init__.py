"""Everything the pipeline keeps on disk: checkpoints, feature caches, reports."""
