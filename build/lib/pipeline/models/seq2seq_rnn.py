"""GRU encoder-decoder with additive (Bahdanau) attention, or without it; greedy and beam-search decoding.

The architecture follows bentrevett/pytorch-seq2seq tutorials 3 and 4: a bidirectional GRU encoder over packed
padded sequences, additive attention with the padding masked out, and a GRU decoder fed the embedded previous
token plus the attention context. The attention's encoder projection is computed once per source (it does not
depend on the decoder state), which is the same function as one Linear over [hidden; encoder_output].

With `attention=False` (the control rnn_noattn) the decoder's context is the same fixed vector at every step: the
encoder's final states (forward GRU after the last token, backward GRU after the first), as in Cho et al. 2014.
The decoder then never reads the per-position encoder outputs; its step still returns a weights row (all zeros) so
that decoding code is shared, and no attention heatmaps are drawn for it.

Token ids 0-3 are reserved: <pad>, <unk>, <sos>, <eos> (see pipeline.train.text2text.Vocab).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD_IDX, UNK_IDX, SOS_IDX, EOS_IDX = 0, 1, 2, 3
NEVER_GENERATED = (PAD_IDX, SOS_IDX)


@dataclass(frozen=True)
class RNNConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    emb_dim: int = 128
    hid_dim: int = 256
    dropout: float = 0.2
    attention: bool = True  # False: fixed context vector (the encoder's final states); older models lack the key

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncoderState:
    outputs: torch.Tensor  # [batch, src_len, 2*hid]; exactly 0 at padded positions
    keys: torch.Tensor  # [batch, src_len, hid]; attention's projection of the outputs
    mask: torch.Tensor  # [batch, src_len] bool, True on real tokens
    hidden: torch.Tensor  # [batch, hid]; initial decoder state
    final: torch.Tensor  # [batch, 2*hid]; the GRUs' final states (forward, backward): the context without attention

    def index_select(self, index: torch.Tensor) -> EncoderState:
        return EncoderState(
            self.outputs[index], self.keys[index], self.mask[index], self.hidden[index], self.final[index]
        )


@dataclass
class Hypothesis:
    """One decoded sequence: tokens without <sos>/<eos>; length counts <eos> when the sequence finished."""

    tokens: list[int]
    log_prob: float
    length: int
    attention: torch.Tensor  # [length, src_len]: one row of attention weights per generated step

    def score(self, length_penalty: float) -> float:
        """Length-normalised log-probability (HF generate's convention: log_prob / length ** length_penalty)."""
        return self.log_prob / (max(self.length, 1) ** length_penalty)


def source_mask(src_len: torch.Tensor, max_len: int) -> torch.Tensor:
    positions = torch.arange(max_len, device=src_len.device)  # [src_len]
    return positions.unsqueeze(0) < src_len.unsqueeze(1)  # [batch, src_len]


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hid_dim: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_IDX)
        self.rnn = nn.GRU(emb_dim, hid_dim, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hid_dim, hid_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # src: [batch, src_len]; src_len: [batch]
        embedded = self.dropout(self.embedding(src))  # [batch, src_len, emb]
        packed = pack_padded_sequence(embedded, src_len.cpu(), batch_first=True, enforce_sorted=False)
        packed_outputs, hidden = self.rnn(packed)  # hidden: [2, batch, hid] (forward, backward), original order
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.size(1))
        # outputs: [batch, src_len, 2*hid], zeros where padded
        final = torch.cat((hidden[-2], hidden[-1]), dim=1)  # [batch, 2*hid]
        hidden = torch.tanh(self.fc(final))  # [batch, hid]
        return outputs, hidden, final


class Attention(nn.Module):
    """Additive attention: v^T tanh(W_e h_enc + W_d s_dec); padded source positions get weight exactly 0."""

    def __init__(self, enc_dim: int, hid_dim: int):
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, hid_dim, bias=False)
        self.dec_proj = nn.Linear(hid_dim, hid_dim)
        self.v = nn.Linear(hid_dim, 1, bias=False)

    def keys(self, enc_outputs: torch.Tensor) -> torch.Tensor:
        return self.enc_proj(enc_outputs)  # [batch, src_len, hid]

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # hidden: [batch, hid]; keys: [batch, src_len, hid]; mask: [batch, src_len]
        energy = torch.tanh(keys + self.dec_proj(hidden).unsqueeze(1))  # [batch, src_len, hid]
        scores = self.v(energy).squeeze(2)  # [batch, src_len]
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)  # [batch, src_len]


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hid_dim: int, dropout: float, attention: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_IDX)
        self.attention = Attention(2 * hid_dim, hid_dim) if attention else None
        self.rnn = nn.GRUCell(2 * hid_dim + emb_dim, hid_dim)
        self.fc_out = nn.Linear(2 * hid_dim + hid_dim + emb_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, token: torch.Tensor, hidden: torch.Tensor, enc: EncoderState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # token: [batch]; hidden: [batch, hid]
        embedded = self.dropout(self.embedding(token))  # [batch, emb]
        if self.attention is None:  # fixed context: the encoder's final states, whatever the step
            context = enc.final  # [batch, 2*hid]
            attn = torch.zeros_like(enc.mask, dtype=context.dtype)  # [batch, src_len], no weights
        else:
            attn = self.attention(hidden, enc.keys, enc.mask)  # [batch, src_len]
            context = torch.bmm(attn.unsqueeze(1), enc.outputs).squeeze(1)  # [batch, 2*hid]
        hidden = self.rnn(torch.cat((embedded, context), dim=1), hidden)  # [batch, hid]
        logits = self.fc_out(torch.cat((hidden, context, embedded), dim=1))  # [batch, tgt_vocab]
        return logits, hidden, attn


class Seq2Seq(nn.Module):
    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.src_vocab_size, config.emb_dim, config.hid_dim, config.dropout)
        self.decoder = Decoder(
            config.tgt_vocab_size, config.emb_dim, config.hid_dim, config.dropout, attention=config.attention
        )

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> EncoderState:
        outputs, hidden, final = self.encoder(src, src_len)  # [batch, src_len, 2*hid], [batch, hid], [batch, 2*hid]
        attention = self.decoder.attention
        keys = attention.keys(outputs) if attention is not None else outputs[:, :, :0]  # [batch, src_len, hid or 0]
        return EncoderState(outputs, keys, source_mask(src_len, src.size(1)), hidden, final)

    def forward(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt: torch.Tensor, teacher_forcing_ratio: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for tgt[:, 1:] given tgt[:, 0] = <sos>; per step, the next input is the gold token with
        probability `teacher_forcing_ratio`, else the model's own argmax (one draw per step for the batch)."""
        # src: [batch, src_len]; tgt: [batch, tgt_len]
        enc = self.encode(src, src_len)
        hidden = enc.hidden  # [batch, hid]
        token = tgt[:, 0]  # [batch]
        all_logits, all_attn = [], []
        for t in range(1, tgt.size(1)):
            logits, hidden, attn = self.decoder(token, hidden, enc)  # [batch, vocab], [batch, hid], [batch, src_len]
            all_logits.append(logits)
            all_attn.append(attn)
            teacher = teacher_forcing_ratio >= 1.0 or bool(torch.rand(()) < teacher_forcing_ratio)
            token = tgt[:, t] if teacher else logits.argmax(dim=1)
        return torch.stack(all_logits, dim=1), torch.stack(
            all_attn, dim=1
        )  # [batch, tgt_len-1, vocab], [batch, tgt_len-1, src_len]


def step_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities the decoders use: <pad> and <sos> are never generated (renormalised without them)."""
    logits = logits.clone()  # [batch, vocab]
    logits[:, list(NEVER_GENERATED)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)  # [batch, vocab]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sequence_log_prob(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, tokens: list[int]) -> float:
    """Log-probability of one exact output (tokens, then <eos> if it is the last token) for src of batch size 1."""
    with _eval_mode(model):
        tgt = torch.tensor([[SOS_IDX, *tokens]], device=src.device)  # [1, 1+len]
        logits, _ = model(src, src_len, tgt, teacher_forcing_ratio=1.0)  # [1, len, vocab]
        logp = step_log_probs(logits[0])  # [len, vocab]
        return float(logp.gather(1, tgt[0, 1:].unsqueeze(1)).sum())


def greedy_decode(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: int) -> list[Hypothesis]:
    """Batched greedy decoding: the most probable next token at each step, until <eos> or max_len tokens."""
    with _eval_mode(model):
        enc = model.encode(src, src_len)
        batch = src.size(0)
        hidden = enc.hidden  # [batch, hid]
        token = torch.full((batch,), SOS_IDX, dtype=torch.long, device=src.device)  # [batch]
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)  # [batch]
        log_prob = torch.zeros(batch, device=src.device)  # [batch]
        lengths = torch.zeros(batch, dtype=torch.long, device=src.device)  # [batch]
        steps, attns = [], []
        for _ in range(max_len):
            logits, hidden, attn = model.decoder(token, hidden, enc)  # [batch, vocab], [batch, hid], [batch, src_len]
            logp = step_log_probs(logits)  # [batch, vocab]
            best_logp, token = logp.max(dim=1)  # [batch], [batch]
            log_prob += best_logp.masked_fill(finished, 0.0)
            lengths += (~finished).long()
            steps.append(token)
            attns.append(attn)
            finished |= token == EOS_IDX
            if bool(finished.all()):
                break
        tokens = torch.stack(steps, dim=1).tolist()  # [batch, steps]
        attention = torch.stack(attns, dim=1)  # [batch, steps, src_len]
    out = []
    for b in range(batch):
        n = int(lengths[b])
        seq = tokens[b][:n]
        out.append(
            Hypothesis(seq[:-1] if seq and seq[-1] == EOS_IDX else seq, float(log_prob[b]), n, attention[b, :n].cpu())
        )
    return out


def beam_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_len: torch.Tensor,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
    include_greedy: bool = True,
) -> list[Hypothesis]:
    """Batched beam search, ranking finished hypotheses by log_prob / length ** length_penalty.

    Stops an example when it has beam_size finished hypotheses and no running beam can still beat the worst one
    at its current length (HF generate's default heuristic). Pruning can drop the greedy path, so by default the
    greedy output competes too and the result is never scored below greedy decoding.
    """
    if beam_size <= 1:
        return greedy_decode(model, src, src_len, max_len)
    greedy = greedy_decode(model, src, src_len, max_len) if include_greedy else [None] * src.size(0)
    batch, k = src.size(0), beam_size
    device = src.device
    with _eval_mode(model):
        flat = torch.arange(batch, device=device).repeat_interleave(k)  # [batch*k]
        enc = model.encode(src, src_len).index_select(flat)
        hidden = enc.hidden  # [batch*k, hid]
        beam_scores = torch.full((batch, k), float("-inf"), device=device)  # [batch, k]
        beam_scores[:, 0] = 0.0  # all beams start identical: keep one so the first step's top-k differ
        token = torch.full((batch * k,), SOS_IDX, dtype=torch.long, device=device)  # [batch*k]
        history = torch.empty((batch * k, 0), dtype=torch.long, device=device)  # [batch*k, step]
        attn_history = torch.empty((batch * k, 0, src.size(1)), device=device)  # [batch*k, step, src_len]
        finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
        done = [False] * batch
        for step in range(max_len):
            logits, hidden, attn = model.decoder(
                token, hidden, enc
            )  # [batch*k, vocab], [batch*k, hid], [batch*k, src_len]
            logp = step_log_probs(logits)  # [batch*k, vocab]
            vocab = logp.size(1)
            candidates = (beam_scores.view(-1, 1) + logp).view(batch, k * vocab)  # [batch, k*vocab]
            top_scores, top_idx = candidates.topk(min(2 * k, k * vocab), dim=1)  # [batch, 2k]
            top_beam, top_token = (top_idx // vocab).tolist(), (top_idx % vocab).tolist()
            top_scores_list = top_scores.tolist()
            next_beam = torch.zeros((batch, k), dtype=torch.long)  # [batch, k]
            next_token = torch.full((batch, k), PAD_IDX, dtype=torch.long)  # [batch, k]
            next_scores = torch.full((batch, k), float("-inf"))  # [batch, k]
            for b in range(batch):
                if done[b]:
                    continue
                n = 0
                for rank, (score, beam, tok) in enumerate(zip(top_scores_list[b], top_beam[b], top_token[b])):
                    if score == float("-inf"):
                        break
                    if tok == EOS_IDX:
                        if rank < k:
                            row = b * k + beam
                            att = torch.cat(
                                (attn_history[row], attn[row].unsqueeze(0)), dim=0
                            ).cpu()  # [step+1, src_len]
                            finished[b].append(Hypothesis(history[row].tolist(), score, step + 1, att))
                    else:
                        next_beam[b, n], next_token[b, n], next_scores[b, n] = beam, tok, score
                        n += 1
                    if n == k:
                        break
                finished[b] = sorted(finished[b], key=lambda h: h.score(length_penalty), reverse=True)[:k]
                best_running = float(next_scores[b, 0])
                done[b] = n == 0 or (
                    len(finished[b]) == k
                    and finished[b][-1].score(length_penalty) >= best_running / ((step + 1) ** length_penalty)
                )
            if all(done):
                break
            rows = (torch.arange(batch).unsqueeze(1) * k + next_beam).view(-1).to(device)  # [batch*k]
            token = next_token.view(-1).to(device)  # [batch*k]
            history = torch.cat((history[rows], token.unsqueeze(1)), dim=1)  # [batch*k, step+1]
            attn_history = torch.cat((attn_history[rows], attn[rows].unsqueeze(1)), dim=1)  # [batch*k, step+1, src_len]
            hidden = hidden[rows]
            beam_scores = next_scores.to(device)
        else:  # max_len reached: unfinished beams compete too
            for b in range(batch):
                if not done[b]:
                    for beam in range(k):
                        score = float(beam_scores[b, beam])
                        if score > float("-inf"):
                            row = b * k + beam
                            finished[b].append(
                                Hypothesis(history[row].tolist(), score, max_len, attn_history[row].cpu())
                            )
    results = []
    for b in range(batch):
        candidates = [*finished[b], *([greedy[b]] if greedy[b] is not None else [])]
        results.append(max(candidates, key=lambda h: h.score(length_penalty)))
    return results


def trim_attention(hyp: Hypothesis, src_len: int) -> torch.Tensor:
    """The attention rows of a hypothesis over the real source tokens only."""
    return hyp.attention[:, :src_len]  # [length, src_len]
