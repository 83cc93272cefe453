"""Pretraining: tokenizers trained on the corpus, GPT (causal LM) and BERT (MLM + NSP)."""
