"""Training one model family on one task: fine-tuning pretrained transformers, text-to-text from scratch."""
