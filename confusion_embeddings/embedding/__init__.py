"""Class vectors from pairs: the two word2vec engines and the vector files.

engines.py     `embed` (pairs -> Embedding, with the embed config), which dispatches to
gensim_w2v.py  gensim's Word2Vec on two-word sentences (the paper's engine)
skipgram.py    a directed skip-gram in JAX, trained on the exact pair counts
resampling.py  the refits on bootstrap redraws of the pictures (the resample stage)
store.py       the embed and resample stages' files, read without gensim or JAX (evaluate)
formats.py     the same vectors as word2vec text and gensim KeyedVectors
"""
