"""Model code shared by training and serving: the GRU seq2seq, translators, NER tagger, loading, pyfunc."""
