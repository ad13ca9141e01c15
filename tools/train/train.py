#!/usr/bin/env python3
"""Trains @tinyserve/model-tiny on the accelerator machine, end to end, in one process.

Steps: (a) byte-level BPE tokenizer on the SOTU training split; (b) a training stream of
SOTU text mixed with synthetic long-context retrieval (passkeys hidden in filler, key-value
recall, repeated spans to copy); (c) a small LLaMA (GQA, RoPE, SwiGLU, RMSNorm) trained with
bf16 autocast, AdamW and a cosine schedule; (d) held-out perplexity and passkey retrieval
with Hugging Face, dense attention; (e) save_pretrained as float16 safetensors shards;
(f) reference.json (fp32 greedy tokens and logprobs for fixed prompts); (g) metrics.json;
then the model folder is packed into tar parts of at most 15.5 MiB for the trip back.

Inputs: the gzipped JSON-lines splits written by tools/train/prepare-data.mjs, and
tools/train/passkey-format.json (the evaluation prompt, shared with the TypeScript harness).
Everything random is seeded; see tools/train/README.md for the exact commands.
"""
import argparse
import gzip
import json
import math
import os
import re
import shutil
import sys
import tarfile
import time
from collections import Counter

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
T_START = time.time()

SPECIALS = ['<s>', '</s>', '<unk>']
BOS, EOS, UNK = 0, 1, 2
MODEL_NAME = 'tinyserve/model-tiny'  # = MODEL_TINY_NAME in packages/model-tiny/src/index.ts

# A plain Question/Answer template: the model is a base model, so the template only has to
# be stable and easy to reproduce in TypeScript (bos_token is emitted by the template, so the
# rendered text must be encoded without adding special tokens again).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}Question: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Answer: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)

REFERENCE_PROMPTS = [
    'Fellow-Citizens of the Senate and House of Representatives:',
    'The state of the Union is',
    'In the year 1862 the Congress',
]


def log(msg):
    print(f'[{time.time() - T_START:7.1f}s] {msg}', flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default='.train/data')
    p.add_argument('--out', default='/tmp/model-tiny', help='model folder to write')
    p.add_argument('--pack-dir', default='', help='where the tar parts and metrics.json go ($OUT)')
    p.add_argument('--seed', type=int, default=1234)
    p.add_argument('--vocab', type=int, default=4096)
    p.add_argument('--hidden', type=int, default=384)
    p.add_argument('--layers', type=int, default=8)
    p.add_argument('--heads', type=int, default=6)
    p.add_argument('--kv-heads', type=int, default=2)
    p.add_argument('--head-dim', type=int, default=64)
    p.add_argument('--ffn', type=int, default=1024)
    p.add_argument('--ctx', type=int, default=2048)
    p.add_argument('--rope-theta', type=float, default=10000.0)
    p.add_argument('--batch', type=int, default=16, help='sequences of --ctx tokens per step')
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--min-lr-frac', type=float, default=0.1)
    p.add_argument('--warmup', type=int, default=200)
    p.add_argument('--wd', type=float, default=0.1)
    p.add_argument('--steps', type=int, default=4000)
    p.add_argument('--train-seconds', type=float, default=420.0,
                   help='safety cap: the cosine follows max(step/steps, time/train-seconds)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True)
    p.add_argument('--eager-bench-steps', type=int, default=0,
                   help='run this many eager steps first and report their speed, then compile')
    p.add_argument('--eval-every', type=int, default=250)
    p.add_argument('--workers', type=int, default=10)
    p.add_argument('--mix', default='sotu=0.45,passkey=0.30,kv=0.17,copy=0.08')
    p.add_argument('--bos-start', type=float, default=0.5,
                   help='share of SOTU slots that start with BOS and a sentence (the rest start anywhere)')
    p.add_argument('--copy-sotu-frac', type=float, default=0.0,
                   help='share of copy spans taken from SOTU prose instead of random words')
    p.add_argument('--target-weight', type=float, default=3.0,
                   help='loss weight of retrieval targets relative to SOTU language-model tokens')
    p.add_argument('--dropout', type=float, default=0.2, help='dropout on each attention and MLP output (training only)')
    p.add_argument('--emb-dropout', type=float, default=0.1, help='dropout on the token embeddings (training only)')
    p.add_argument('--val-mod', type=int, default=9,
                   help='training addresses with index %% 20 == this are the validation split (not trained on)')
    p.add_argument('--select', choices=['last', 'best'], default='best',
                   help='best: keep the evaluation with the lowest validation perplexity among those whose '
                        'passkey probe reached --select-passkey')
    p.add_argument('--select-passkey', type=float, default=0.9)
    p.add_argument('--smoke', action='store_true', help='tiny everything: checks the whole pipeline in a minute')
    a = p.parse_args()
    if a.smoke:
        a.vocab, a.hidden, a.layers, a.heads, a.kv_heads, a.head_dim, a.ffn = 512, 64, 2, 2, 1, 32, 128
        a.ctx, a.batch, a.steps, a.train_seconds, a.warmup = 256, 4, 20, 60, 5
        a.compile, a.eager_bench_steps, a.eval_every, a.workers = False, 0, 10, 2
    return a


# ----------------------------------------------------------------------------- data

def read_jsonl_gz(path):
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def train_tokenizer(texts, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())  # byte-level: all 256 bytes are in the alphabet, nothing is unknown
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', BOS)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f'special token {s} should have id {i}'
    return tok


class Pieces:
    """Token ids of the fixed text pieces, so that workers assemble documents without a tokenizer.

    Every piece after a document's first starts with a space; the pre-tokenizer splits before
    spaces and isolates digits, so concatenated pieces equal the encoding of the joined text
    (checked in verify_assembly)."""

    def __init__(self, tok, fmt):
        e = lambda s: np.array(tok.encode(s, add_special_tokens=False).ids, dtype=np.int32)
        self.e = e
        self.pk_prefix = e(fmt['prefix'])
        self.grass = e(fmt['filler'])
        self.question = e(fmt['question'])
        pre, mid, post = fmt['needle'].split('{passkey}')
        self.needle_pre, self.needle_mid, self.needle_post = e(pre), e(mid), e(post)
        self.dot = e('.')
        sp = tok.encode(' 7', add_special_tokens=False).ids
        assert len(sp) == 2, f'" 7" should be a space token and a digit token, got {sp}'
        self.space = sp[0]
        self.digit = np.array([tok.token_to_id(str(d)) for d in range(10)], dtype=np.int32)
        assert all(d is not None for d in self.digit)
        self.kv_header = e('Here is a list of codes. Remember them.')
        self.kv_code_for = e(' The code for')
        self.kv_is = e(' is')
        self.kv_what = e(' What is the code for')
        self.kv_qmark = e('?')
        self.empty = np.zeros(0, dtype=np.int32)

    def num(self, k):
        s = str(int(k))
        out = np.empty(len(s) + 1, dtype=np.int32)
        out[0] = self.space
        out[1:] = self.digit[np.frombuffer(s.encode(), dtype=np.uint8) - 48]
        return out

    def needle(self, k):
        n = self.num(k)
        return np.concatenate([self.needle_pre[:-1] if self._pre_ends_space else self.needle_pre,
                               n, self.needle_mid[:-1] if self._mid_ends_space else self.needle_mid,
                               n, self.needle_post])

    def finish(self):
        # The needle template is " The pass key is {k}. Remember it. {k} is ...": the text before
        # each {k} ends with a space, which num() already supplies as its first token.
        self._pre_ends_space = len(self.needle_pre) and self.needle_pre[-1] == self.space
        self._mid_ends_space = len(self.needle_mid) and self.needle_mid[-1] == self.space
        assert self._pre_ends_space and self._mid_ends_space, 'needle pieces should end with a space token'
        return self


# Loss classes of the tokens in a training sequence.
NO_LOSS, LM, TARGET = 0, 1, 2


class Synth:
    """Builds training sequences of exactly T tokens and the loss class of each token (numpy only:
    runs in DataLoader workers). Documents are lists of (tokens, class) parts. In the synthetic
    documents only the retrieval targets are trained (the passkey answer, the recalled codes, the
    second copy of a span): their filler, needles and questions are context only, so the
    unconditional language model never learns to blurt out "The pass key is" in the middle of an
    address, and the small SOTU corpus is not repeated through the filler."""

    MIN_DOC = 96

    def __init__(self, P, stream, sent_flat, sent_off, words, mix, copy_sotu_frac=0.0,
                 sent_first=None, bos_start=0.0):
        self.P, self.stream, self.sent_flat, self.sent_off, self.words = P, stream, sent_flat, sent_off, words
        self.copy_sotu_frac = copy_sotu_frac
        self.sent_first, self.bos_start = sent_first, bos_start
        self.p_sotu = mix['sotu']
        kinds = ['passkey', 'kv', 'copy']
        w = np.array([mix[k] for k in kinds], dtype=np.float64)
        self.kinds, self.kind_p = kinds, w / w.sum()
        self.gen = {'passkey': self.passkey_doc, 'kv': self.kv_doc, 'copy': self.copy_doc}

    # fillers return (tokens, insertion points)
    def grass(self, budget):
        g = self.P.grass
        n = max(0, budget // len(g))
        return np.tile(g, n), np.arange(n + 1) * len(g)

    def sotu_sents(self, rng, budget):
        off = self.sent_off
        j = int(rng.integers(0, len(off) - 1))
        k = int(np.searchsorted(off, off[j] + budget, side='right')) - 1
        if k <= j:  # first sentence alone is longer than the budget: cut it
            toks = self.sent_flat[off[j]:off[j] + budget]
            return toks, np.array([0, len(toks)])
        return self.sent_flat[off[j]:off[k]], off[j:k + 1] - off[j]

    def filler(self, rng, budget):
        return self.grass(budget) if rng.random() < 0.5 else self.sotu_sents(rng, budget)

    def passkey_doc(self, rng, L):
        P = self.P
        key = int(rng.integers(10000, 100000))
        head = P.pk_prefix if rng.random() < 0.7 else P.empty
        needle = P.needle(key)
        ans = np.concatenate([P.num(key), P.dot])
        budget = L - 2 - len(head) - len(needle) - len(P.question) - len(ans)
        if budget < 0:
            return None
        fill, pts = self.filler(rng, budget)
        a = pts[int(rng.integers(0, len(pts)))]
        return [([BOS], NO_LOSS), (head, NO_LOSS), (fill[:a], NO_LOSS), (needle, NO_LOSS), (fill[a:], NO_LOSS),
                (P.question, NO_LOSS), (ans, TARGET), ([EOS], TARGET)]

    def key_tokens(self, rng):
        w = self.words
        return np.concatenate([w[int(rng.integers(0, len(w)))], w[int(rng.integers(0, len(w)))]])

    def kv_doc(self, rng, L):
        P = self.P
        nq = max(1, min(int(rng.integers(2, 9)), (L - 40) // 60))
        budget = L - 2 - len(P.kv_header) - nq * 24
        pairs, used, seen = [], 0, set()
        while True:
            key = self.key_tokens(rng)
            kb = key.tobytes()
            if kb in seen:
                continue
            val = P.num(int(rng.integers(1000, 10000)))
            piece = np.concatenate([P.kv_code_for, key, P.kv_is, val, P.dot])
            if used + len(piece) > budget:
                break
            seen.add(kb)
            pairs.append((key, val, piece))
            used += len(piece)
        if not pairs:
            return None
        parts = [([BOS], NO_LOSS), (P.kv_header, NO_LOSS)] + [(p[2], NO_LOSS) for p in pairs]
        total = 1 + len(P.kv_header) + used + 1
        for qi in rng.choice(len(pairs), size=min(nq, len(pairs)), replace=False):
            key, val, _ = pairs[int(qi)]
            q = np.concatenate([P.kv_what, key, P.kv_qmark])
            ans = np.concatenate([P.kv_code_for, key, P.kv_is, val, P.dot])
            if total + len(q) + len(ans) > L:
                break
            parts += [(q, NO_LOSS), (ans, TARGET)]
            total += len(q) + len(ans)
        parts.append(([EOS], TARGET))
        return parts

    def copy_doc(self, rng, L):
        max_span = min(400, (L - 2) // 2)
        if max_span < 16:
            return None
        S = int(rng.integers(16, max_span + 1))
        # Spans of random words only: copying SOTU prose taught the model to repeat earlier
        # passages of ordinary text (held-out perplexity doubled and greedy text looped).
        if rng.random() >= self.copy_sotu_frac:
            toks, n = [], 0
            while True:
                w = self.words[int(rng.integers(0, len(self.words)))]
                if n + len(w) > S:
                    break
                toks.append(w)
                n += len(w)
            span = np.concatenate(toks) if toks else self.P.empty
        else:
            span = self.sotu_sents(rng, S)[0]
        if len(span) < 4:
            return None
        gap_budget = L - 2 - 2 * len(span)
        g = gap_budget if rng.random() < 0.5 else int(rng.integers(0, gap_budget + 1))
        gap = self.filler(rng, g)[0]
        return [([BOS], NO_LOSS), (span, NO_LOSS), (gap, NO_LOSS), (span, TARGET), ([EOS], TARGET)]

    def sotu_window(self, rng, n):
        s = int(rng.integers(0, len(self.stream) - n))
        return self.stream[s:s + n]

    def slot(self, rng, T):
        """Returns (tokens, classes): int64 arrays of length T; classes[t] says how the
        prediction of tokens[t] is trained (NO_LOSS, LM or TARGET)."""
        if rng.random() < self.p_sotu:
            if self.sent_first is not None and rng.random() < self.bos_start:
                # A document that starts with BOS at position 0, as every prompt does: without
                # these, text right after a leading BOS is never trained (synthetic documents
                # train only their answers) and generation from short prompts degenerates.
                off = self.sent_off
                while True:
                    j = int(rng.integers(0, len(off) - 2))
                    first = self.sent_first[j]
                    rest = T - 1 - len(first)
                    if rest >= 0 and off[j + 1] + rest <= off[-1]:
                        break
                x = np.concatenate([[BOS], first, self.sent_flat[off[j + 1]:off[j + 1] + rest]]).astype(np.int64)
            else:
                x = self.sotu_window(rng, T).astype(np.int64)
            return x, np.full(T, LM, dtype=np.int64)
        parts, rem, first, tries = [], T, True, 0
        while rem >= self.MIN_DOC and tries < 8:
            tries += 1
            kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
            # Half of the first documents fill the whole slot, so that distances up to the
            # full context are common; the rest are uniform in length.
            L = rem if (first and rng.random() < 0.5) else int(rng.integers(self.MIN_DOC, rem + 1))
            first = False
            doc = self.gen[kind](rng, L)
            if doc is None:
                continue
            parts += doc
            rem -= sum(len(p) for p, _ in doc)
        if rem > 0:
            parts.append((self.sotu_window(rng, rem), LM))
        x = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in parts])
        y = np.concatenate([np.full(len(p), c, dtype=np.int64) for p, c in parts])
        assert len(x) == T, (len(x), T)
        return x, y


class StreamDataset(torch.utils.data.IterableDataset):
    def __init__(self, synth, batch, T, seed):
        self.synth, self.batch, self.T, self.seed = synth, batch, T, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            xy = [self.synth.slot(rng, self.T) for _ in range(self.batch)]
            yield torch.from_numpy(np.stack([np.stack([x for x, _ in xy]), np.stack([y for _, y in xy])]))


# ----------------------------------------------------------------------------- passkey eval

def passkey_targets(ctx, max_new):
    cap = ctx - max_new
    named = [('1K', 1024), ('2K', 2048), ('full', ctx)]
    extra = [('256', 256), ('512', 512), ('1.5K', 1536)]
    out, seen = [], set()
    for label, t in extra + named:
        t = min(t, cap)
        if t in seen:
            for o in out:  # same length under two names (2K = full when ctx is 2048)
                if o[1] == t:
                    o[0] = o[0] + '=' + label
            continue
        seen.add(t)
        out.append([label, t])
    return sorted(out, key=lambda o: o[1])


def passkey_key(i, target):
    return 10000 + ((i + 1) * 2654435761 + target * 40503) % 90000


def passkey_prompt(tok, P, fmt, target, depth, key):
    needle_text = fmt['needle'].replace('{passkey}', str(key))
    n = (target - 1 - len(P.pk_prefix) - len(P.needle(key)) - len(P.question)) // len(P.grass)
    if n < 0:
        raise ValueError(f'target {target} is too short for the passkey prompt')
    a = math.floor(depth * n + 0.5)
    text = fmt['prefix'] + fmt['filler'] * a + needle_text + fmt['filler'] * (n - a) + fmt['question']
    ids = tok.encode(text).ids
    assembled = [BOS] + P.pk_prefix.tolist() + P.grass.tolist() * a + P.needle(key).tolist() \
        + P.grass.tolist() * (n - a) + P.question.tolist()
    assert ids == assembled, 'passkey prompt: piecewise ids differ from the whole-text encoding'
    assert len(ids) <= target
    return text, ids


@torch.no_grad()
def eval_passkey(model, tok, P, fmt, target, n_trials=None, autocast=False, keep_trials=False):
    kpd, nd = fmt['trials']['keysPerDepth'], fmt['trials']['numDepths']
    max_new = fmt['generation']['maxNewTokens']
    n_trials = n_trials or kpd * nd
    rows, prompts = [], []
    for i in range(n_trials):
        depth = (i // kpd) / (nd - 1) if n_trials == kpd * nd else (i % nd) / (nd - 1)
        key = passkey_key(i, target)
        prompts.append(passkey_prompt(tok, P, fmt, target, depth, key)[1])
        rows.append({'i': i, 'depth': round(depth, 4), 'passkey': key})
    device = next(model.parameters()).device
    correct = 0
    for s in range(0, n_trials, 25):
        x = torch.tensor(prompts[s:s + 25], device=device)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=EOS, eos_token_id=EOS)
        for r, row in zip(out[:, x.shape[1]:].tolist(), rows[s:s + 25]):
            text = tok.decode(r, skip_special_tokens=True).lstrip()
            m = re.match(r'\d+', text)
            row['output'] = text
            row['correct'] = bool(m and m.group(0) == str(row['passkey']))
            correct += row['correct']
    res = {'targetTokens': target, 'promptTokens': len(prompts[0]), 'trials': n_trials,
           'accuracy': correct / n_trials}
    by_depth = {}
    for row in rows:
        by_depth.setdefault(row['depth'], []).append(row['correct'])
    res['byDepth'] = {str(d): sum(v) / len(v) for d, v in sorted(by_depth.items())}
    if keep_trials:
        res['trialResults'] = [[r['depth'], r['passkey'], r['output'], r['correct']] for r in rows]
    return res


# ----------------------------------------------------------------------------- perplexity

def heldout_windows(held_ids, ctx):
    wins = []
    for ids in held_ids:
        for s in range(0, len(ids), ctx):
            w = ids[s:s + ctx]
            if len(w) >= 2:
                wins.append(w)
    return wins


@torch.no_grad()
def eval_ppl(model, wins, autocast=False, batch=16):
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    full = [w for w in wins if len(w) == len(wins[0])]
    rest = [w for w in wins if len(w) != len(wins[0])]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]
    for g in groups:
        x = torch.tensor(g, device=device)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x, use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll -= lp.gather(-1, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
    return {'ppl': math.exp(nll / count), 'nllPerToken': nll / count, 'tokensScored': count}


def add_dropout(model, p_resid, p_emb):
    """Dropout on the residual branches and the embeddings through forward hooks, so the model
    stays a stock LlamaForCausalLM (hooks are neither saved nor active in eval mode)."""
    import torch.nn.functional as F

    def out_hook(p):
        def hook(m, _inp, out):
            if isinstance(out, tuple):
                return (F.dropout(out[0], p, m.training),) + tuple(out[1:])
            return F.dropout(out, p, m.training)
        return hook
    if p_emb > 0:
        model.model.embed_tokens.register_forward_hook(out_hook(p_emb))
    if p_resid > 0:
        for layer in model.model.layers:
            layer.self_attn.register_forward_hook(out_hook(p_resid))
            layer.mlp.register_forward_hook(out_hook(p_resid))


# ----------------------------------------------------------------------------- saving

def patch_json(path, fn):
    with open(path) as f:
        obj = json.load(f)
    fn(obj)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write('\n')


def save_tokenizer(tok, out, ctx):
    import transformers
    cls = getattr(transformers, 'PreTrainedTokenizerFast', None) or getattr(transformers, 'TokenizersBackend')
    hf_tok = cls(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', unk_token='<unk>',
        model_max_length=ctx, clean_up_tokenization_spaces=False)
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    # tokenizer.json is the trained tokenizer byte for byte; tokenizer_config.json carries the
    # keys that loaders outside Python read (chat template inline, not only in a .jinja file).
    tok.save(os.path.join(out, 'tokenizer.json'))

    def fix(c):
        c.update({'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>',
                  'unk_token': '<unk>', 'model_max_length': ctx, 'clean_up_tokenization_spaces': False,
                  'chat_template': CHAT_TEMPLATE})
    patch_json(os.path.join(out, 'tokenizer_config.json'), fix)


def save_model(model, out, ctx, rope_theta):
    from transformers import GenerationConfig
    gen = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, do_sample=True,
                           temperature=0.8, top_p=0.95, max_new_tokens=256)
    model.generation_config = gen
    model = model.to(torch.float16)
    try:
        model.save_pretrained(out, safe_serialization=True, max_shard_size='15MB')
    except TypeError:  # transformers versions where safetensors is the only format
        model.save_pretrained(out, max_shard_size='15MB')
    gen.save_pretrained(out)

    # Legacy keys beside transformers 5's rope_parameters/dtype, for loaders that read the
    # long-standing LLaMA config.json layout.
    def fix(c):
        c.setdefault('rope_theta', rope_theta)
        c.setdefault('torch_dtype', 'float16')
        c.setdefault('max_position_embeddings', ctx)
        c['tinyserve_model_name'] = MODEL_NAME
    patch_json(os.path.join(out, 'config.json'), fix)


def pack(out_dir, pack_dir, limit=int(15.5 * 2**20)):
    files = sorted(os.listdir(out_dir), key=lambda f: -os.path.getsize(os.path.join(out_dir, f)))
    bins = []
    for f in files:  # first fit, largest first
        size = os.path.getsize(os.path.join(out_dir, f)) + 1024
        for b in bins:
            if b[0] + size <= limit:
                b[0] += size
                b[1].append(f)
                break
        else:
            bins.append([size, [f]])
    names = []
    for i, (_, fs) in enumerate(bins):
        name = os.path.join(pack_dir, f'model-part-{i + 1}.tar')
        with tarfile.open(name, 'w') as t:
            for f in sorted(fs):
                t.add(os.path.join(out_dir, f), arcname=f)
        names.append((os.path.basename(name), os.path.getsize(name), sorted(fs)))
    return names


# ----------------------------------------------------------------------------- main

def main():
    a = parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    fmt = json.load(open(os.path.join(HERE, 'passkey-format.json')))
    mix = {k: float(v) for k, v in (kv.split('=') for kv in a.mix.split(','))}
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'true')

    all_train = read_jsonl_gz(os.path.join(a.data, 'sotu-train.jsonl.gz'))
    held_docs = read_jsonl_gz(os.path.join(a.data, 'sotu-heldout.jsonl.gz'))
    # Checkpoint selection uses its own validation addresses, so the held-out split stays unseen
    # by every decision and its perplexity is an honest figure.
    val_docs = [d for d in all_train if d['index'] % 20 == a.val_mod]
    train_docs = [d for d in all_train if d['index'] % 20 != a.val_mod]
    if a.smoke:
        train_docs, held_docs, val_docs = train_docs[:25], held_docs[:2], val_docs[:2]
    texts = [d['text'] for d in train_docs]
    log(f'data: {len(train_docs)} train / {len(val_docs)} validation / {len(held_docs)} held-out addresses, '
        f'{sum(map(len, texts))} train chars')

    tok = train_tokenizer(texts, a.vocab)
    P = Pieces(tok, fmt).finish()
    log(f'tokenizer: vocab {tok.get_vocab_size()}; sample {tok.encode("The pass key is 48213.").tokens}')

    enc = tok.encode_batch(texts)
    stream = np.concatenate([np.array(e.ids + [EOS], dtype=np.int32) for e in enc])
    held_ids = [e.ids for e in tok.encode_batch([d['text'] for d in held_docs])]
    val_ids = [e.ids for e in tok.encode_batch([d['text'] for d in val_docs])]
    sent_re = re.compile(r'(?<=[.!?])\s+(?=["(A-Z0-9])')
    sents = [s for t in texts for s in sent_re.split(t) if s]
    sent_enc = tok.encode_batch([' ' + s for s in sents], add_special_tokens=False)
    sent_lens = np.array([len(e.ids) for e in sent_enc], dtype=np.int64)
    sent_flat = np.concatenate([np.array(e.ids, dtype=np.int32) for e in sent_enc])
    sent_off = np.concatenate([[0], np.cumsum(sent_lens)])
    # Sentence pieces concatenated must equal the encoding of the joined text (exact assembly).
    probe = ' ' + ' '.join(sent_re.split(texts[0]))
    same = tok.encode(probe, add_special_tokens=False).ids == \
        np.concatenate([np.array(e.ids) for e in tok.encode_batch(
            [' ' + s for s in sent_re.split(texts[0]) if s], add_special_tokens=False)]).tolist()
    counts = Counter(w for t in texts for w in re.findall(r'\b[a-z]{4,10}\b', t))
    word_list = sorted(w for w, c in counts.items() if c >= (20 if not a.smoke else 2))
    words = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch([' ' + w for w in word_list], add_special_tokens=False)]
    chars_per_token = sum(map(len, texts)) / (len(stream) - 2 * len(texts))
    log(f'encoded: {len(stream)} train tokens ({chars_per_token:.2f} chars/token), '
        f'{sum(map(len, held_ids))} held-out tokens, {len(sents)} sentences (piecewise==whole: {same}), '
        f'{len(words)} words')

    # Check the worker-side assembly against the tokenizer on the fixed pieces.
    k = 48213
    want = tok.encode(fmt['needle'].replace('{passkey}', str(k)), add_special_tokens=False).ids
    assert P.needle(k).tolist() == want, (P.needle(k).tolist(), want)
    kv_text = ' The code for nation river is 4821. What is the code for nation river?'
    kv_ids = tok.encode(kv_text, add_special_tokens=False).ids
    key = np.concatenate([P.e(' nation'), P.e(' river')])
    kv_asm = np.concatenate([P.kv_code_for, key, P.kv_is, P.num(4821), P.dot, P.kv_what, key, P.kv_qmark]).tolist()
    assert kv_ids == kv_asm, (kv_ids, kv_asm)

    # Each sentence also encoded without its leading space: the start of a BOS-led document.
    sent_first = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch(sents, add_special_tokens=False)]
    two = sents[1] + ' ' + sents[2]
    assert tok.encode(two, add_special_tokens=False).ids == \
        sent_first[1].tolist() + sent_flat[sent_off[2]:sent_off[3]].tolist(), 'sentence-start assembly differs'
    synth = Synth(P, stream, sent_flat, sent_off, words, mix, copy_sotu_frac=a.copy_sotu_frac,
                  sent_first=sent_first, bos_start=a.bos_start)
    rng = np.random.default_rng(a.seed)
    for _ in range(20):
        synth.slot(rng, a.ctx)
    t0 = time.time()
    for _ in range(50):
        synth.slot(rng, a.ctx)
    log(f'synth: {50 / (time.time() - t0):.0f} sequences/s in one process; sample passkey doc: '
        f'{tok.decode(np.concatenate([p for p, _ in synth.passkey_doc(rng, 160)]).tolist())!r}')

    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # workers fork after this point
    loader = torch.utils.data.DataLoader(
        StreamDataset(synth, a.batch, a.ctx, a.seed), batch_size=None, num_workers=a.workers,
        pin_memory=True, prefetch_factor=4 if a.workers else None, persistent_workers=a.workers > 0,
        multiprocessing_context='fork' if a.workers else None)
    batches = iter(loader)

    # ------------------------------------------------------------------ model
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=a.hidden, intermediate_size=a.ffn,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim, max_position_embeddings=a.ctx, rms_norm_eps=1e-5, rope_theta=a.rope_theta,
        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None,
        attention_bias=False, mlp_bias=False, hidden_act='silu', initializer_range=0.02,
        attn_implementation='sdpa')
    device = torch.device('cuda')
    model = LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f'model: {n_params / 1e6:.2f}M parameters, attention {model.config._attn_implementation}, '
        f'rope {getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_theta", None)}')
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    add_dropout(model, a.dropout, a.emb_dropout)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': a.wd}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    def lr_at(step, progress):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        q = min(1.0, max(progress, 0.0))
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * q)))

    wins = heldout_windows(held_ids, a.ctx)
    val_wins = heldout_windows(val_ids, a.ctx)
    best = None
    class_weight = torch.tensor([0.0, 1.0, a.target_weight], device=device)

    def step_loss(x, c):
        """Weighted next-token loss; also the mean loss of the LM tokens and of the targets."""
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                               reduction='none').view(x.shape[0], -1)
        c = c[:, 1:]
        w = class_weight[c]
        lm, tg = (c == LM).float(), (c == TARGET).float()
        return ((ce * w).sum() / w.sum(), (ce * lm).sum() / lm.sum().clamp(min=1),
                (ce * tg).sum() / tg.sum().clamp(min=1))

    fwd = step_loss
    if a.compile and a.eager_bench_steps == 0:
        fwd = torch.compile(step_loss)
    curve, evals = [], []
    loss_acc = torch.zeros(3, device=device)
    n_acc, tokens, wait = 0, 0, 0.0
    t_train = time.time()
    t_mark, step_mark = t_train, 0
    bench = {}
    step = 0
    stop_reason = 'steps'
    def do_eval():
        nonlocal best
        model.eval()
        te = time.time()
        vp = eval_ppl(model, val_wins, autocast=True)
        pp = eval_ppl(model, wins, autocast=True)
        pk = eval_passkey(model, tok, P, fmt, a.ctx - 8, n_trials=30, autocast=True)
        model.train()
        evals.append({'step': step, 'tokens': tokens, 'valPpl': round(vp['ppl'], 3),
                      'heldoutPpl': round(pp['ppl'], 3), 'passkeyFull30': pk['accuracy']})
        chosen = ''
        # Retrieval first (up to the threshold), then validation perplexity.
        key = (min(pk['accuracy'], a.select_passkey), -vp['ppl'])
        if a.select == 'best' and (best is None or key > best['key']):
            best = {'step': step, 'valPpl': vp['ppl'], 'key': key, 'passkey': pk['accuracy'],
                    'state': {k: v.detach().to('cpu', copy=True) for k, v in model.state_dict().items()}}
            chosen = ' (best so far)'
        log(f'eval step {step}: val ppl {vp["ppl"]:.2f}, held-out ppl {pp["ppl"]:.2f}, passkey@{pk["promptTokens"]} '
            f'{pk["accuracy"]:.2f} ({time.time() - te:.1f}s){chosen}')
        return time.time() - te

    while step < a.steps:
        elapsed = time.time() - t_train
        if elapsed > a.train_seconds:
            stop_reason = 'time'
            break
        if a.compile and a.eager_bench_steps and step == a.eager_bench_steps:
            torch.cuda.synchronize()
            bench['eagerTokensPerSec'] = (step - 5) * a.batch * a.ctx / (time.time() - bench['t5'])
            log(f'eager: {bench["eagerTokensPerSec"]:.0f} tokens/s; compiling')
            fwd = torch.compile(step_loss)
            bench['tCompileStart'] = time.time()
        if step == 5:
            torch.cuda.synchronize()
            bench['t5'] = time.time()
        progress = max((step - a.warmup) / max(1, a.steps - a.warmup),
                       (elapsed - 0) / a.train_seconds if step >= a.warmup else 0.0)
        lr = lr_at(step, progress)
        for g in opt.param_groups:
            g['lr'] = lr
        tw = time.time()
        xy = next(batches).to(device, non_blocking=True)
        x, y = xy[0], xy[1]
        wait += time.time() - tw
        with torch.autocast('cuda', dtype=torch.bfloat16):
            try:
                loss, lm_loss, tg_loss = fwd(x, y)
            except Exception as e:  # a compiler failure must not cost the run: fall back to eager
                if fwd is step_loss:
                    raise
                log(f'torch.compile failed ({type(e).__name__}: {e}); continuing eager')
                fwd = step_loss
                loss, lm_loss, tg_loss = fwd(x, y)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_acc += torch.stack([loss.detach(), lm_loss.detach(), tg_loss.detach()])
        n_acc += 1
        step += 1
        tokens += x.numel()
        if step == 1:
            torch.cuda.synchronize()
            bench['firstStepSeconds'] = time.time() - t_train
            log(f'first step took {bench["firstStepSeconds"]:.1f}s (compile: {fwd is not step_loss})')
            t_mark, step_mark = time.time(), 1
        if 'tCompileStart' in bench and 'compileSeconds' not in bench:
            torch.cuda.synchronize()
            bench['compileSeconds'] = time.time() - bench['tCompileStart']
            log(f'first compiled step took {bench["compileSeconds"]:.1f}s')
            t_mark, step_mark = time.time(), step
        if step % 25 == 0 or step == a.steps:
            l, l_lm, l_tg = (loss_acc / n_acc).tolist()
            now = time.time()
            tps = (step - step_mark) * a.batch * a.ctx / (now - t_mark)
            curve.append({'step': step, 'tokens': tokens, 'seconds': round(now - t_train, 1),
                          'loss': round(l, 4), 'lmLoss': round(l_lm, 4), 'targetLoss': round(l_tg, 4),
                          'lr': lr, 'gradNorm': round(float(gnorm), 3)})
            log(f'step {step:5d} loss {l:.4f} (lm {l_lm:.4f}, targets {l_tg:.4f}) lr {lr:.2e} '
                f'gnorm {float(gnorm):.2f} {tps / 1e3:.0f}k tok/s wait {wait:.1f}s')
            loss_acc.zero_()
            n_acc, t_mark, step_mark = 0, now, step
        if step % a.eval_every == 0 or step == a.steps:
            t_mark += do_eval()
    if not evals or evals[-1]['step'] != step:
        do_eval()
    torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    log(f'training done: {step} steps, {tokens / 1e6:.1f}M tokens in {train_seconds:.1f}s (stop: {stop_reason})')
    selected = {'rule': a.select, 'step': step}
    if a.select == 'best' and best is not None:
        model.load_state_dict(best['state'])
        selected = {'rule': f'highest passkey probe (capped at {a.select_passkey}), then lowest validation ppl',
                    'step': best['step'], 'valPpl': round(best['valPpl'], 3), 'passkeyProbe': best['passkey']}
    log(f'selected checkpoint: {selected}')
    del batches, loader

    # ------------------------------------------------------------------ save + evaluate saved weights
    out = a.out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    save_tokenizer(tok, out, a.ctx)
    save_model(model, out, a.ctx, a.rope_theta)
    del model, fwd, opt
    torch.cuda.empty_cache()
    log(f'saved: {sorted(os.listdir(out))}')

    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        m32 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    except TypeError:
        m32 = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    m32 = m32.to(device).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    tok_checks = {
        'autoTokenizerClass': type(hf_tok).__name__,
        'idsMatch': all(hf_tok(s)['input_ids'] == tok.encode(s).ids for s in REFERENCE_PROMPTS + [texts[0][:2000]]),
        'chatTemplate': hf_tok.apply_chat_template([{'role': 'user', 'content': 'What is the pass key?'}],
                                                   tokenize=False, add_generation_prompt=True),
    }
    log(f'reloaded: {tok_checks}')

    te = time.time()
    ppl = eval_ppl(m32, wins, autocast=False, batch=8)
    val_ppl = eval_ppl(m32, val_wins, autocast=False, batch=8)
    log(f'held-out perplexity (fp32): {ppl["ppl"]:.3f} over {ppl["tokensScored"]} tokens')
    max_new = fmt['generation']['maxNewTokens']
    passkey = []
    for label, target in passkey_targets(a.ctx, max_new):
        r = eval_passkey(m32, tok, P, fmt, target, keep_trials=True)
        r['label'] = label
        passkey.append(r)
        log(f'passkey {label:>10} ({r["promptTokens"]} tokens): {r["accuracy"]:.2f}  by depth {list(r["byDepth"].values())}')
    eval_seconds = time.time() - te

    # ------------------------------------------------------------------ reference.json (fp32, CPU)
    m_cpu = m32.to('cpu')
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    pk_text, _ = passkey_prompt(tok, P, fmt, min(256, a.ctx - 20), 0.5, 51738)
    refs = []
    for prompt in REFERENCE_PROMPTS + [pk_text]:
        ids = tok.encode(prompt).ids
        x = torch.tensor([ids])
        gen_ids, lps, top5 = [], [], None
        with torch.no_grad():
            for t in range(20):
                logits = m_cpu(input_ids=x, use_cache=False).logits[0, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
                nxt = int(torch.argmax(lp))
                if t == 0:
                    v, i = torch.topk(lp, 5)
                    top5 = [[int(j), float(u)] for u, j in zip(v, i)]
                gen_ids.append(nxt)
                lps.append(float(lp[nxt]))
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
            g = m_cpu.generate(input_ids=torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                               temperature=None, top_p=None, top_k=None, pad_token_id=EOS, eos_token_id=None)
        refs.append({'prompt': prompt, 'input_ids': ids, 'output_ids': gen_ids, 'logprobs': lps,
                     'text': tok.decode(gen_ids, skip_special_tokens=True), 'first_step_top5': top5,
                     'generate_with_cache_matches': g[0, len(ids):].tolist() == gen_ids})
        log(f'reference {prompt[:40]!r} -> {refs[-1]["text"]!r}')
    with open(os.path.join(out, 'reference.json'), 'w') as f:
        json.dump({'description': 'Greedy decoding with Hugging Face transformers in float32 on the CPU from the '
                   'saved float16 weights: exactly 20 new tokens per prompt (EOS not treated specially); '
                   'logprobs are log-softmax of the float32 logits at each chosen token. The fourth prompt is '
                   'the passkey format (tools/train/passkey-format.json) at 256 target tokens, depth 0.5, '
                   'passkey 51738.',
                   'dtype': 'float32', 'device': 'cpu', 'prompts': refs}, f, indent=1)
        f.write('\n')

    # ------------------------------------------------------------------ metrics.json
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    metrics = {
        'model': MODEL_NAME,
        'parameters': n_params,
        'config': {k: getattr(a, k) for k in ('vocab', 'hidden', 'layers', 'heads', 'kv_heads', 'head_dim',
                                              'ffn', 'ctx', 'rope_theta')},
        'training': {'steps': step, 'plannedSteps': a.steps, 'stopReason': stop_reason,
                     'tokensSeen': tokens, 'batchSequences': a.batch, 'sequenceTokens': a.ctx,
                     'seconds': round(train_seconds, 1), 'tokensPerSecond': round(tokens / train_seconds),
                     'loaderWaitSeconds': round(wait, 1), 'lr': a.lr, 'minLrFrac': a.min_lr_frac,
                     'warmup': a.warmup, 'weightDecay': a.wd, 'betas': [0.9, 0.95], 'gradClip': 1.0,
                     'mix': mix, 'bosStart': a.bos_start, 'copySotuFrac': a.copy_sotu_frac, 'targetWeight': a.target_weight, 'dropout': a.dropout, 'embDropout': a.emb_dropout,
                     'seed': a.seed, 'compile': a.compile, 'selected': selected,
                     'bench': {k: v for k, v in bench.items() if not k.startswith('t')},
                     'lossCurve': curve, 'evals': evals,
                     'finalTrainLoss': curve[-1]['loss'] if curve else None},
        'data': {'trainAddresses': len(train_docs), 'validationAddresses': len(val_docs),
                 'heldoutAddresses': len(held_docs), 'validationRule': f'index % 20 == {a.val_mod}',
                 'trainTokens': int(len(stream)), 'heldoutTokens': int(sum(map(len, held_ids))),
                 'charsPerToken': round(chars_per_token, 3), 'trainEpochsOfSotuSlots':
                     round(tokens * mix['sotu'] / len(stream), 2)},
        'heldout': ppl,
        'validation': val_ppl,
        'passkey': passkey,
        'tokenizerChecks': tok_checks,
        'files': sizes,
        'modelBytes': sum(v for f, v in sizes.items() if f.endswith('.safetensors')),
        'evalSeconds': round(eval_seconds, 1),
        'wallSeconds': round(time.time() - T_START, 1),
        'versions': {'python': sys.version.split()[0], 'torch': torch.__version__,
                     'transformers': transformers.__version__,
                     'tokenizers': __import__('tokenizers').__version__, 'numpy': np.__version__},
        'gpu': torch.cuda.get_device_name(0),
    }
    with open(os.path.join(out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
        f.write('\n')
    if a.pack_dir:
        os.makedirs(a.pack_dir, exist_ok=True)
        shutil.copy(os.path.join(out, 'metrics.json'), os.path.join(a.pack_dir, 'metrics.json'))
        for name, size, fs in pack(out, a.pack_dir):
            log(f'packed {name} ({size / 2**20:.1f} MiB): {fs}')
    summary = {'ppl': round(ppl['ppl'], 3), 'passkey': {p['label']: p['accuracy'] for p in passkey},
               'steps': step, 'tokens': tokens, 'trainSeconds': round(train_seconds, 1),
               'modelMB': round(metrics['modelBytes'] / 1e6, 2)}
    log(f'SUMMARY {json.dumps(summary)}')


if __name__ == '__main__':
    main()
