"""Text generation with this pipeline's pretrained GPT: sampled continuations of prompts.

`TextGenerator.load(folder)` reads a GPT-2 checkpoint (safetensors) with its tokenizer, e.g. data/pretrain/gpt/model;
`complete(prompts, ...)` samples each prompt's continuation. Prompt i is sampled with the torch seed `seed + i`, one
prompt at a time (no padding), so a prompt's completion does not depend on the other prompts in the request and the
same prompts and settings give the same completions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.models.loading import check_checkpoint_folder, load_tokenizer


class TextGenerator:
    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, folder: str | Path) -> TextGenerator:
        from transformers import GPT2LMHeadModel

        folder = check_checkpoint_folder(folder)
        model = GPT2LMHeadModel.from_pretrained(str(folder), use_safetensors=True)
        return cls(model, load_tokenizer(folder))

    @property
    def context_size(self) -> int:
        return int(self.model.config.n_positions)

    @torch.no_grad()
    def complete(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
    ) -> list[str]:
        """The sampled continuation (the new text only) of each prompt."""
        device = next(self.model.parameters()).device
        out = []
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # [1, prompt_len]
            if ids.shape[1] == 0:  # an empty prompt: start from the document separator
                ids = torch.tensor([[self.tokenizer.eos_token_id]])
            budget = min(max_new_tokens, self.context_size - 1)
            ids = ids[:, -(self.context_size - budget) :].to(device)  # keep the prompt's end within the context
            torch.manual_seed(seed + i)
            generated = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=budget,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )  # [1, prompt_len + new]
            out.append(self.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
        return out
