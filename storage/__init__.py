"""Everything the pipeline keeps: the versioned Icechunk artifact store (``store``), row-sharded
artifacts written in parallel (``shards``), and plain atomic files (``files``)."""
