"""Class vectors from pairs: the two word2vec engines and the vector files.

engines.py   the `embed` params and `train_vectors`, which dispatches to
gensim_w2v.py  gensim's Word2Vec on two-word sentences (the paper's engine)
skipgram.py    a directed skip-gram in JAX, trained on the exact pair counts
store.py     vectors.npy + manifest.json, read without gensim (evaluate imports it)
formats.py   the same vectors as word2vec text and gensim KeyedVectors
"""
