//! libspanalloc.so (placeholder until the preload issue lands).
