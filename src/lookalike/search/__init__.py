"""The search layer: the index and its storage, re-ranking, clustering and scoring.

* :mod:`.collection`: a searchable collection on disk, and its changes
* :mod:`.state`: the manifest (the commit point) and the collection-wide files, read without a lock
* :mod:`.segments`: where a collection's items lie on disk, written only as they change
* :mod:`.metadata`: the items' sources, labels and hashes (SQLite)
* :mod:`.checkpoint`: encoding a new collection so that a crash costs one chunk
* :mod:`.backends`, :mod:`.milvus_backend`: where codes are searched (FAISS, Milvus)
* :mod:`.rerank`: label-free diffusion re-ranking
* :mod:`.clustering`, :mod:`.clusterstore`: K-means on codes and search inside a cluster
* :mod:`.duplicates`: duplicate images in tiers; :mod:`.duppass` (the pass over candidate
  blocks, resumable), :mod:`.alignment` (aligned pixel correlation), :mod:`.filetiers`
  (identical files, same pixels)
* :mod:`.metrics`, :mod:`.evaluation`: scoring a ranking against labels
"""
