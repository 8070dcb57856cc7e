"""Local models: the embedder and the summarizer, loaded from local files only."""
