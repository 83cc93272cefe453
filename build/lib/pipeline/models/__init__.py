"""Model code shared by training and serving: the GRU seq2seq, text generators (translation, summarization),
NER tagger, loading, pyfunc."""
