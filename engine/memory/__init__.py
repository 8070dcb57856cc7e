"""Vector memory: FAISS indexes per (organization, namespace), their store and their durability."""
