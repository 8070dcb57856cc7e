"""Vector memory: FAISS and word indexes per (organization, namespace), their store, codec,
snapshots and durability, and what closed sessions become in it."""
