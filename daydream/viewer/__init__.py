"""`daydream view`: a local, server-rendered results viewer over the tracker's tables."""
