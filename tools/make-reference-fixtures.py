#!/usr/bin/env python3
"""Make tiny random Hugging Face GPT-2 / LLaMA checkpoints and their reference outputs.

The TypeScript engine is tested against these (fp32 logprobs within 1e-3, identical greedy
tokens), so everything here is deterministic: fixed corpus, fixed seeds, float32 on the CPU,
eager attention, deterministic torch algorithms.

Run it where torch, transformers and tokenizers are installed (the accelerator machine):

    PYTHONUNBUFFERED=1 python3 tools/make-reference-fixtures.py --out /tmp/fx/hf --tar "$OUT/hf.tar.gz"

then unpack the tarball into the repo: `tar -xzf hf.tar.gz -C __fixtures__/`.
It exits non-zero if any self-check failed (after still writing the files, so they can be
inspected); see the PROBLEM lines it prints.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import sys
import tarfile

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

try:
    from transformers import PreTrainedTokenizerFast
except ImportError:  # transformers 5 renamed the class; the old name may be gone
    from transformers import TokenizersBackend as PreTrainedTokenizerFast

TF_MAJOR = int(transformers.__version__.split(".")[0])
# transformers 5 loads in the checkpoint's dtype by default and calls the argument `dtype`.
DTYPE_KW = "dtype" if TF_MAJOR >= 5 else "torch_dtype"

NEW_TOKENS = 20
MIN_MARGIN = 1e-2  # top-1 minus top-2 logit at every greedy step, so greedy is no coin toss
MAX_SEED_TRIES = 200
MAX_POS = 256
MEDIUM_TARGET = 56  # tokens: spans 4 pages of 16
LONG_TARGET = 150
# Larger than HF's 0.02 so that logits are peaked and greedy decisions are clear.
EMB_STD = 0.5
MAT_STD = 0.25
BIAS_STD = 0.1
NORM_NOISE = 0.1

PROBLEMS = []


def problem(msg):
    print("PROBLEM:", msg, flush=True)
    PROBLEMS.append(msg)


# ---------------------------------------------------------------------------------------
# Fixed text: the tokenizer's training corpus and the prompts.

CORPUS = [
    "The small model reads a prompt, one token at a time, and writes the next word it thinks is likely.",
    "A cache keeps the keys and values of every token it has seen, so the model does not compute them again.",
    "When the cache grows long, the server cuts it into pages of sixteen tokens and keeps a small box for each page.",
    "The box holds the smallest and the largest value of every channel, and the query asks which boxes matter most.",
    "Only the pages with the highest scores are read, and the rest of the memory stays quiet until it is needed.",
    "In the morning the baker opens the shop, lights the oven and sets out bread, butter and a pot of strong coffee.",
    "The children walk to school along the river, counting boats and ducks and the stones that shine in the water.",
    "My grandmother kept a garden with tomatoes, beans, onions and roses, and she talked to the plants every evening.",
    "The train to the city leaves at seven, stops at three stations and arrives just before the markets open.",
    "A good recipe is simple: wash the rice, add twice as much water, bring it to a boil and let it rest.",
    "The weather today is cloudy with a chance of rain in the afternoon and a cold wind from the north.",
    "Numbers are tokens too: 1, 2, 3, 10, 42, 100, 2024 and 3.14159 all have to be split into pieces.",
    "She opened the old letter, read the first line twice, and then sat down by the window to read the rest.",
    "The library was quiet except for the sound of pages turning and a clock that ticked above the door.",
    "Engineers test the server with many requests at once, and they measure how long each answer takes.",
    "If the answer is wrong, they compare the numbers with a reference written in another language.",
    "The mountain road was narrow and steep, and the driver went slowly around every sharp turn.",
    "At night the city lights reflect on the water, and the bridges look like strings of small stars.",
    "He wrote the list again: milk, eggs, flour, sugar, apples, salt, and a new pencil for the notes.",
    "The teacher asked the class a question, waited, and smiled when a quiet student raised a hand.",
    "Language models learn patterns from text; they do not see the world, only the words people wrote.",
    "A tokenizer turns text into numbers, and a decoder turns numbers back into text without losing a byte.",
    "The meeting started late because the projector did not work and nobody could find the cable.",
    "Rain fell on the roof all night, and in the morning the garden smelled of wet earth and leaves.",
    "They walked along the beach, collected shells, and watched the sun go down behind the island.",
    "Every function should do one thing well, and every test should be able to fail when the code is wrong.",
    "The cat sat on the warm window sill and watched the birds in the tree across the street.",
    "On Sunday we cooked soup with carrots, potatoes, garlic and pepper, and we ate it with fresh bread.",
    "Café au lait, crème brûlée, naïve, déjà vu, façade, jalapeño, Zürich, São Paulo, smörgåsbord.",
    "Grüße aus München! Le café est prêt. ¿Dónde está la estación? Ça va très bien, merci.",
    "東京は大きな都市です。今日は雨が降っています。私はお茶を飲みます。",
    "北京欢迎你。我们今天学习中文。天气很好。",
    "서울은 아름다운 도시입니다. 안녕하세요!",
    "Emoji travel as bytes: 🙂 😀 🚀 🌧️ 🍞 ☕ 👍🏽 ❤️ and they must come back whole.",
    "Привет, мир! Это маленький тест. Ελληνικά γράμματα: αβγδε.",
]

PASSAGE = (
    "The server starts with an empty cache. A request arrives with a long prompt, and the scheduler "
    "splits the prompt into chunks so that other requests can still make progress. Each chunk runs "
    "through every layer of the model: the keys and values are written into pages, the bounding box "
    "of each page is updated, and the attention reads the pages that belong to the sequence. When the "
    "prompt is done, the model produces one token per step. For every new token the query compares "
    "itself with the boxes, picks the pages with the highest upper bound, and attends only to those. "
    "The result should be close to the dense answer, and the engineers measure how close it is with "
    "perplexity, agreement of the top token, and the share of attention mass that the chosen pages hold. "
    "In the evening the baker closes the shop, the children come home along the river, and the rain "
    "starts again over the quiet garden behind the old library."
)

SHORT_PROMPT = "The cat sat on the"
MULTIBYTE_PROMPT = "Grüße aus Zürich! Le café est déjà prêt. 東京は雨です。🙂🚀👍🏽 Привет!"

CHAT_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}"
    r"{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour. Ünïcode 🙂 too."},
]


def f8(x):
    """Round to 8 significant digits: far below the 1e-3 tolerance, keeps the JSON small."""
    return float(f"{float(x):.8g}")


# ---------------------------------------------------------------------------------------
# Tokenizers


def train_bpe(vocab_size, special_tokens):
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    return tk


def patch_json(path, updates):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.update(updates)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def save_hf_tokenizer(tk, out_dir, init_kwargs, config_updates):
    """Save through transformers so tokenizer_config.json is what HF writes, then make sure
    the fields a loader reads are present whatever this transformers version chose to omit."""
    try:
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, **init_kwargs)
    except TypeError as e:  # an init kwarg this version does not take
        problem(f"PreTrainedTokenizerFast rejected {sorted(init_kwargs)}: {e!r}; retrying without chat_template")
        kw = {k: v for k, v in init_kwargs.items() if k != "chat_template"}
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
    if "chat_template" in init_kwargs:
        fast.chat_template = init_kwargs["chat_template"]
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        written = json.load(f)
    print(f"  tokenizer_config.json as written by transformers: keys {sorted(written)}")
    updates = dict(config_updates)
    if written.get("tokenizer_class") not in (None, "PreTrainedTokenizerFast"):
        print(f"  tokenizer_class was {written.get('tokenizer_class')!r}; writing PreTrainedTokenizerFast")
    patch_json(cfg_path, updates)
    # The reload must work with the patched config, or the patch is wrong.
    try:
        AutoTokenizer.from_pretrained(out_dir)
    except Exception as e:  # noqa: BLE001 - report and fall back to what HF wrote
        problem(f"reload after patching tokenizer_config.json failed ({e!r}); restoring tokenizer_class")
        patch_json(cfg_path, {"tokenizer_class": written.get("tokenizer_class")})
    return sorted(os.listdir(out_dir))


def build_gpt2_tokenizer(out_dir):
    tk = train_bpe(499, [])
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # GPT-2 keeps <|endoftext|> as its last id; adding it after training does the same.
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    eot = "<|endoftext|>"
    common = {
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "model_max_length": MAX_POS,
        "clean_up_tokenization_spaces": False,
    }
    # add_bos_token only goes into tokenizer_config.json: given to the constructor, transformers 5
    # replaces the ByteLevel post-processor (what GPT-2's tokenizer.json has) with a template.
    files = save_hf_tokenizer(
        tk, out_dir, common,
        dict(common, add_bos_token=False, add_eos_token=False, tokenizer_class="PreTrainedTokenizerFast"),
    )
    return files


def build_llama_tokenizer(out_dir):
    tk = train_bpe(500, ["<unk>", "<s>", "</s>"])
    bos_id = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", bos_id)],
    )
    common = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": MAX_POS,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    files = save_hf_tokenizer(tk, out_dir, common, dict(common, tokenizer_class="PreTrainedTokenizerFast"))
    return files


def tokenizer_info(tok_dir):
    hf = AutoTokenizer.from_pretrained(tok_dir)
    raw = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    return hf, raw


def encode(hf, raw, text):
    ids = list(hf(text)["input_ids"])
    raw_ids = raw.encode(text).ids
    if ids != raw_ids:
        problem(f"HF tokenizer and raw tokenizer.json disagree on {text[:40]!r}: {ids[:12]} vs {raw_ids[:12]}")
    return ids


def decode(hf, raw, ids, skip_special_tokens=False):
    text = hf.decode(ids, skip_special_tokens=skip_special_tokens)
    raw_text = raw.decode(ids, skip_special_tokens=skip_special_tokens)
    if text != raw_text:
        problem(f"HF decode and raw tokenizer.json decode disagree for {ids[:12]}: {text!r} vs {raw_text!r}")
    return text


def build_prompt(hf, raw, words, target):
    """Shortest word prefix of `words` that encodes to at least `target` tokens."""
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if len(encode(hf, raw, text)) >= target:
            return text
    problem(f"passage too short for {target} tokens")
    return " ".join(words)


def make_prompts(hf, raw):
    words = PASSAGE.split(" ")
    prompts = [
        ("short", SHORT_PROMPT),
        ("medium", build_prompt(hf, raw, words, MEDIUM_TARGET)),
        ("multibyte", MULTIBYTE_PROMPT),
        ("long", build_prompt(hf, raw, words, LONG_TARGET)),
    ]
    out = []
    for name, text in prompts:
        ids = encode(hf, raw, text)
        if len(ids) + NEW_TOKENS > MAX_POS:
            problem(f"prompt {name} too long: {len(ids)} tokens")
        out.append({"name": name, "text": text, "input_ids": ids})
    return out


def text_checks(hf, raw, family):
    special = "<|endoftext|>" if family == "gpt2" else "</s>"
    encode_texts = [
        "",
        " ",
        "Hello, world!",
        "  two  spaces\n\nnew\tlines  ",
        "1234567890 3.14159",
        "naïve café — 東京 🙂👍🏽",
        f"before{special}after",
    ]
    encode_checks = [{"text": t, "input_ids": encode(hf, raw, t)} for t in encode_texts]

    decode_checks = []

    def add(ids, note, skip=False):
        decode_checks.append(
            {"ids": ids, "skip_special_tokens": skip, "text": decode(hf, raw, ids, skip), "note": note}
        )

    mb = encode(hf, raw, MULTIBYTE_PROMPT)
    add(mb, "multi-byte prompt round trip")
    emoji = encode(hf, raw, "🙂")
    specials = {hf.bos_token_id, hf.eos_token_id, hf.unk_token_id}
    special_free = [i for i in emoji if i not in specials]
    if len(special_free) >= 2:
        add(special_free[:-1], "emoji cut before its last byte: incomplete UTF-8 decodes to U+FFFD")
    else:
        problem(f"emoji encodes to {emoji}: cannot build a split-character decode check")
    with_special = encode(hf, raw, f"Hello{special} world")
    add(with_special, "special tokens kept")
    add(with_special, "special tokens skipped", skip=True)
    # A fixed spread of ids across the vocabulary, including byte tokens.
    n = len(hf)
    add([(7 * k * k + 13 * k + 3) % n for k in range(16)], "fixed id spread")
    return encode_checks, decode_checks


def chat_check(hf):
    text = hf.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    # The template already writes bos_token, so the rendered text is encoded without special tokens.
    ids = list(hf(text, add_special_tokens=False)["input_ids"])
    if not text.startswith("<s>") or ids[0] != hf.bos_token_id:
        problem(f"chat template did not start with BOS: {text[:20]!r} {ids[:3]}")
    return {
        "messages": CHAT_MESSAGES,
        "add_generation_prompt": True,
        "text": text,
        "input_ids_without_special_tokens": ids,
    }


# ---------------------------------------------------------------------------------------
# Models


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                is_emb = any(s in name for s in ("wte", "wpe", "embed_tokens", "lm_head"))
                p.copy_(torch.randn(p.shape, generator=g) * (EMB_STD if is_emb else MAT_STD))
            elif name.endswith(".weight"):  # the only 1-D weights here are norm scales
                p.copy_(1.0 + NORM_NOISE * torch.randn(p.shape, generator=g))
            else:
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def gpt2_config(vocab, eos):
    return GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POS,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )


def llama_config(vocab, bos, eos, kv_heads, tied, eps):
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POS,
        rope_theta=10000.0,
        rms_norm_eps=eps,
        tie_word_embeddings=tied,
        bos_token_id=bos,
        eos_token_id=eos,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


def build_model(cls, config, seed):
    try:
        config._attn_implementation = "eager"
    except Exception as e:  # noqa: BLE001 - only the in-memory seed search uses this model
        print(f"  note: could not set eager attention on the config: {e!r}")
    torch.manual_seed(seed)
    model = cls(config)
    init_weights(model, seed)
    if config.tie_word_embeddings:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            problem(f"{cls.__name__}: tie_word_embeddings is set but lm_head is not tied")
    return model


def widened(model, dtype):
    """The model as a loader that stores `dtype` and computes in fp32 sees it."""
    if dtype == torch.float32:
        return model
    return copy.deepcopy(model).to(dtype).to(torch.float32).eval()


@torch.no_grad()
def greedy(model, ids, n, stop_below=None):
    seq = list(ids)
    chosen, logprobs, margins = [], [], []
    for _ in range(n):
        if stop_below is not None and margins and margins[-1] <= stop_below:
            break  # the seed search only needs to know that some step is unclear
        logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1].double()
        top = torch.topk(logits, 2)
        nxt = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
        chosen.append(nxt)
        seq.append(nxt)
    return chosen, logprobs, margins


@torch.no_grad()
def teacher_forced(model, ids):
    logits = model(torch.tensor([ids]), use_cache=False).logits[0].double()
    lsm = torch.log_softmax(logits, -1)
    lps = [None] + [float(lsm[i - 1, ids[i]]) for i in range(1, len(ids))]
    return logits, lps


def pick_seed(label, make, dtypes, prompts, first_seed):
    """First seed from `first_seed` whose greedy steps all have a clear top-1, for every stored
    dtype of the family (each reference is computed from its own widened weights)."""
    for seed in range(first_seed, first_seed + MAX_SEED_TRIES):
        model = make(seed)
        worst = float("inf")
        for dt in dtypes:
            m = widened(model, dt)
            for p in prompts:
                _, _, margins = greedy(m, p["input_ids"], NEW_TOKENS, stop_below=MIN_MARGIN)
                worst = min(worst, min(margins))
                if worst <= MIN_MARGIN:
                    break
            if worst <= MIN_MARGIN:
                break
        if worst > MIN_MARGIN:
            print(f"  {label}: seed {seed} (smallest greedy margin {worst:.4f})", flush=True)
            return seed, model
        print(f"  {label}: seed {seed} rejected (greedy margin {worst:.2e})", flush=True)
    problem(f"{label}: no seed in {MAX_SEED_TRIES} tries gives greedy margins > {MIN_MARGIN}")
    return first_seed, make(first_seed)


def save_model(model, out_dir, dtype, gen_cfg, tok_dir, max_shard_size=None):
    m = copy.deepcopy(model).to(dtype)
    m.generation_config = gen_cfg
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    try:
        m.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    except TypeError:  # transformers 5 always writes safetensors and dropped the argument
        m.save_pretrained(out_dir, **kwargs)
    dtype_name = str(dtype).replace("torch.", "")
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    # Keep the keys most published checkpoints carry, whichever spelling this transformers
    # version writes (v5 writes `dtype` and nests rope_theta in `rope_parameters`).
    updates = {"torch_dtype": dtype_name}
    if "dtype" in cfg:
        updates["dtype"] = dtype_name
    if cfg.get("model_type") == "llama" and "rope_theta" not in cfg:
        rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        updates["rope_theta"] = rp.get("rope_theta", 10000.0)
    patch_json(cfg_path, updates)
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(out_dir, name))
    return m


def load_widened(model_dir):
    m = AutoModelForCausalLM.from_pretrained(model_dir, **{DTYPE_KW: torch.float32}, attn_implementation="eager")
    return m.float().eval()


def check_weights(label, loaded, expected):
    got = loaded.state_dict()
    for k, v in expected.state_dict().items():
        if k not in got:
            if not k.endswith("attn.bias") and not k.endswith("masked_bias"):
                problem(f"{label}: weight {k} missing after reload")
            continue
        if not torch.equal(got[k].float(), v.float()):
            problem(f"{label}: weight {k} differs after reload (max diff {(got[k].float() - v.float()).abs().max()})")


def stored_dtypes(model_dir):
    from safetensors import safe_open

    seen = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), framework="pt") as f:
                for key in f.keys():
                    dt = str(f.get_slice(key).get_dtype())
                    seen[dt] = seen.get(dt, 0) + 1
    return seen


@torch.no_grad()
def reference_for(label, model, hf, raw, prompts, eos_id, pad_id):
    out = []
    for p in prompts:
        ids = p["input_ids"]
        logits, prompt_lps = teacher_forced(model, ids)
        top5 = torch.topk(logits[-1], 5)
        chosen, lps, margins = greedy(model, ids, NEW_TOKENS)
        if min(margins) <= MIN_MARGIN:
            problem(f"{label}/{p['name']}: greedy margin {min(margins):.2e} <= {MIN_MARGIN}")
        # The step-by-step logprobs must equal one teacher-forced pass over the whole sequence.
        _, full_lps = teacher_forced(model, ids + chosen)
        tf_diff = max(abs(a - b) for a, b in zip(lps, full_lps[len(ids):]))
        if tf_diff > 1e-4:
            problem(f"{label}/{p['name']}: incremental vs teacher-forced logprobs differ by {tf_diff:.2e}")
        # And transformers' own generate (KV-cached) must pick the same tokens.
        try:
            gc = GenerationConfig(
                do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                eos_token_id=None, pad_token_id=pad_id,
            )
            t = torch.tensor([ids])
            gen = model.generate(input_ids=t, attention_mask=torch.ones_like(t), generation_config=gc)
            gen_ids = gen[0, len(ids):].tolist()
            if gen_ids != chosen[: len(gen_ids)]:
                problem(f"{label}/{p['name']}: model.generate {gen_ids} != greedy loop {chosen}")
            elif len(gen_ids) < NEW_TOKENS:
                print(f"  note: {label}/{p['name']}: generate stopped after {len(gen_ids)} tokens "
                      f"(eos {eos_id}); matches the loop so far", flush=True)
        except Exception as e:  # noqa: BLE001 - the loop above is the reference; report only
            problem(f"{label}/{p['name']}: model.generate failed: {e!r}")
        out.append({
            "name": p["name"],
            "text": p["text"],
            "input_ids": ids,
            "prompt_logprobs": [None if x is None else f8(x) for x in prompt_lps],
            "last_logits_top5": {"ids": top5.indices.tolist(), "values": [f8(v) for v in top5.values.tolist()]},
            "greedy_ids": chosen,
            "greedy_logprobs": [f8(x) for x in lps],
            "greedy_text": decode(hf, raw, chosen, False),
            "min_greedy_margin": f8(min(margins)),
        })
        print(f"  {label}/{p['name']}: {len(ids)} prompt tokens, greedy {chosen[:8]}..., "
              f"min margin {min(margins):.3f}", flush=True)
    return out


# ---------------------------------------------------------------------------------------


def environment():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    import safetensors

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "compute": f"CPU ({cpu}), float32, eager attention, torch.use_deterministic_algorithms(True)",
        "machine_gpu": gpu,
        "command": "python3 tools/make-reference-fixtures.py " + " ".join(sys.argv[1:]),
    }


def dir_listing(root):
    rows = []
    for d, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(d, name)
            rows.append((os.path.relpath(path, root), os.path.getsize(path)))
    return rows


def write_readme(root, env, models_info):
    rows = dir_listing(root)
    total = sum(s for _, s in rows)
    lines = [
        "# Hugging Face reference fixtures",
        "",
        "Tiny random GPT-2 and LLaMA checkpoints in Hugging Face layout, with reference outputs",
        "computed by Hugging Face transformers. The engine's correctness tests compare against",
        "`reference.json` in each model folder: fp32 logprobs within 1e-3, identical greedy tokens.",
        "Generated files: do not edit by hand; regenerate with the script.",
        "",
        "## How they were made",
        "",
        f"- Script: `tools/make-reference-fixtures.py` (fixed corpus, prompts and seeds; see the script).",
        f"- Command (on the accelerator machine, from the repo root): `PYTHONUNBUFFERED=1 {env['command']}`,",
        "  then `tar -xzf hf.tar.gz -C __fixtures__/` here.",
        f"- Date (UTC): {env['date_utc']}",
        f"- Machine: GPU {env['machine_gpu']} (not used); references computed on {env['compute']}.",
        f"- Versions: Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"tokenizers {env['tokenizers']}, safetensors {env['safetensors']}.",
        "",
        "## Models",
        "",
        "| folder | architecture | stored dtype | shape | seed | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for info in models_info:
        lines.append(f"| `{info['name']}` | {info['arch']} | {info['dtype']} | {info['shape']} | {info['seed']} | {info['notes']} |")
    lines += [
        "",
        "Weights are drawn from normal distributions wider than transformers' default "
        f"(embeddings and lm_head std {EMB_STD}, other matrices {MAT_STD}, biases {BIAS_STD}, "
        f"norm scales 1 + {NORM_NOISE}·N(0,1)) so logits are peaked; each family's seed is the first "
        f"whose top-1 minus top-2 logit exceeds {MIN_MARGIN} at every greedy step of every prompt.",
        "The bf16 / fp16 / sharded folders hold the same weights as their fp32 sibling; the",
        "low-precision references are computed from the stored weights widened to fp32, i.e.",
        "what a loader that widens to fp32 computes. GPT-2 tensors are named `transformer.*`",
        "(as transformers saves them; lm_head is tied to `transformer.wte.weight` and not stored).",
        "",
        "Tokenizers: byte-level BPE trained with `tokenizers` on the script's corpus (English plus",
        "accented, CJK, Cyrillic, Greek and emoji text). GPT-2 style: ByteLevel pre-tokenizer,",
        "decoder and post-processor, `<|endoftext|>` (the last id) as bos/eos/unk, no special tokens",
        "added. LLaMA style: `<unk>`=0, `<s>`=1, `</s>`=2, BOS added by a TemplateProcessing",
        "post-processor, `add_bos_token: true`, and a small `chat_template`.",
        "",
        "## reference.json",
        "",
        "- `prompts[]`: four prompts (`short`, `medium` ~56 tokens, `multibyte`, `long` ~150 tokens),",
        "  each with `text`; `input_ids` as the HF tokenizer encodes it (special tokens included as",
        "  the tokenizer adds them, so LLaMA prompts start with 1); `prompt_logprobs[i]` =",
        "  log p(input_ids[i] | input_ids[:i]) by teacher forcing, `null` at i = 0;",
        "  `last_logits_top5` (`ids`, raw logit `values`) at the last prompt position;",
        f"  `greedy_ids` ({NEW_TOKENS} new tokens, argmax, no stop on EOS), `greedy_logprobs`",
        "  (log-softmax of each chosen token), `greedy_text` (decode of `greedy_ids`,",
        "  `skip_special_tokens: false`), `min_greedy_margin` (smallest top-1 minus top-2 logit).",
        "  Continuations may contain the EOS id: compare them without stopping on EOS. The greedy",
        "  loop runs a full forward per step and was checked against one teacher-forced pass and",
        "  against `model.generate(do_sample=False)` (KV-cached; it stops at EOS, so up to there).",
        "- `encode_checks[]`: text and the ids HF encodes it to (also equal to `tokenizer.json` alone).",
        "- `decode_checks[]`: ids, `skip_special_tokens` and the text `tokenizer.decode` returns",
        "  (including a cut multi-byte character, which decodes to U+FFFD).",
        "- `chat_template_check` (LLaMA only): messages, the rendered text with",
        "  `add_generation_prompt: true`, and its ids encoded without adding special tokens.",
        "- Floats are rounded to 8 significant digits.",
        "",
        f"## Files ({total} bytes in all)",
        "",
        "| file | bytes |",
        "| --- | --- |",
    ]
    lines += [f"| `{p}` | {s} |" for p, s in rows]
    with open(os.path.join(root, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (becomes __fixtures__/hf); must not exist or be empty")
    ap.add_argument("--tar", help="also write a .tar.gz of the folder (its top entry is the folder's name)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    env = environment()
    for k, v in env.items():
        print(f"{k}: {v}", flush=True)

    root = os.path.abspath(args.out)
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"--out {root} exists and is not empty")
    os.makedirs(root, exist_ok=True)
    staging = root + ".tokenizers"
    shutil.rmtree(staging, ignore_errors=True)

    print("tokenizers", flush=True)
    fam = {}
    for family, build in (("gpt2", build_gpt2_tokenizer), ("llama", build_llama_tokenizer)):
        tok_dir = os.path.join(staging, family)
        files = build(tok_dir)
        hf, raw = tokenizer_info(tok_dir)
        prompts = make_prompts(hf, raw)
        enc, dec = text_checks(hf, raw, family)
        fam[family] = {
            "dir": tok_dir, "hf": hf, "raw": raw, "prompts": prompts, "encode": enc, "decode": dec,
            "chat": chat_check(hf) if family == "llama" else None,
        }
        print(f"  {family}: vocab {len(hf)}, bos {hf.bos_token_id}, eos {hf.eos_token_id}, files {files}, "
              f"prompt lengths {[len(p['input_ids']) for p in prompts]}", flush=True)

    g, l = fam["gpt2"], fam["llama"]
    g_vocab, l_vocab = len(g["hf"]), len(l["hf"])
    g_eos = g["hf"].eos_token_id
    l_bos, l_eos = l["hf"].bos_token_id, l["hf"].eos_token_id

    print("seeds", flush=True)
    g_seed, gpt2 = pick_seed("gpt2", lambda s: build_model(GPT2LMHeadModel, gpt2_config(g_vocab, g_eos), s),
                             [torch.float32, torch.float16], g["prompts"], 1000)
    gqa_seed, gqa = pick_seed(
        "llama-gqa", lambda s: build_model(LlamaForCausalLM, llama_config(l_vocab, l_bos, l_eos, 2, False, 1e-6), s),
        [torch.float32, torch.bfloat16], l["prompts"], 2000)
    mqa_seed, mqa = pick_seed(
        "llama-mqa", lambda s: build_model(LlamaForCausalLM, llama_config(l_vocab, l_bos, l_eos, 1, True, 1e-5), s),
        [torch.float32], l["prompts"], 3000)

    g_gen = GenerationConfig(bos_token_id=g_eos, eos_token_id=g_eos)
    l_gen = GenerationConfig(bos_token_id=l_bos, eos_token_id=l_eos)
    gqa_shape = "hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 176, untied, rope_theta 10000, eps 1e-6"
    specs = [
        # name, model, stored dtype, family, gen config, shard size, seed, arch, shape, notes
        ("gpt2-tiny", gpt2, torch.float32, "gpt2", g_gen, None, g_seed, "GPT2LMHeadModel",
         "n_embd 64, 2 layers, 4 heads, n_positions 256, tied", ""),
        ("gpt2-tiny-fp16", gpt2, torch.float16, "gpt2", g_gen, None, g_seed, "GPT2LMHeadModel",
         "as gpt2-tiny", "gpt2-tiny's weights stored as float16"),
        ("llama-tiny-gqa", gqa, torch.float32, "llama", l_gen, None, gqa_seed, "LlamaForCausalLM", gqa_shape, "GQA"),
        ("llama-tiny-gqa-bf16", gqa, torch.bfloat16, "llama", l_gen, None, gqa_seed, "LlamaForCausalLM",
         "as llama-tiny-gqa", "llama-tiny-gqa's weights stored as bfloat16"),
        ("llama-tiny-gqa-sharded", gqa, torch.float32, "llama", l_gen, "200KB", gqa_seed, "LlamaForCausalLM",
         "as llama-tiny-gqa", "llama-tiny-gqa's weights in several shards + model.safetensors.index.json"),
        ("llama-tiny-mqa", mqa, torch.float32, "llama", l_gen, None, mqa_seed, "LlamaForCausalLM",
         "hidden 64, 2 layers, 4 heads, 1 kv head, intermediate 176, tied, rope_theta 10000, eps 1e-5", "MQA"),
    ]

    models_info = []
    for name, model, dtype, family, gen_cfg, shard, seed, arch, shape, notes in specs:
        print(f"model {name}", flush=True)
        f = fam[family]
        mdir = os.path.join(root, name)
        save_model(model, mdir, dtype, gen_cfg, f["dir"], shard)
        files = sorted(os.listdir(mdir))
        if shard:
            n_shards = len([x for x in files if x.endswith(".safetensors")])
            if n_shards < 2 or "model.safetensors.index.json" not in files:
                problem(f"{name}: expected >= 2 shards and an index, got {files}")
        dts = stored_dtypes(mdir)
        # safetensors names the dtypes F32 / F16 / BF16.
        want = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
        if set(dts) != {want}:
            problem(f"{name}: stored dtypes {dts}, expected only {want}")
        loaded = load_widened(mdir)
        check_weights(name, loaded, widened(model, dtype))
        cfg = loaded.config
        rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
        if family == "llama" and float(rope) != 10000.0:
            problem(f"{name}: reloaded rope_theta {rope}")
        pad = f["hf"].eos_token_id
        ref = {
            "model": name,
            "architecture": arch,
            "stored_dtype": str(dtype).replace("torch.", ""),
            "reference_dtype": "float32",
            "seed": seed,
            "bos_token_id": f["hf"].bos_token_id,
            "eos_token_id": f["hf"].eos_token_id,
            "vocab_size": len(f["hf"]),
            "new_tokens": NEW_TOKENS,
            "generator": env,
            "prompts": reference_for(name, loaded, f["hf"], f["raw"], f["prompts"], f["hf"].eos_token_id, pad),
            "encode_checks": f["encode"],
            "decode_checks": f["decode"],
        }
        if f["chat"] is not None:
            ref["chat_template_check"] = f["chat"]
        with open(os.path.join(mdir, "reference.json"), "w", encoding="utf-8") as fh:
            json.dump(ref, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        models_info.append({"name": name, "arch": arch, "dtype": ref["stored_dtype"], "shape": shape,
                            "seed": seed, "notes": notes})
        print(f"  files {files}, stored dtypes {dts}", flush=True)

    # Same weights must give the same references: the sharded copy exactly, fp32 vs bf16 nearly.
    a = json.load(open(os.path.join(root, "llama-tiny-gqa", "reference.json"), encoding="utf-8"))
    b = json.load(open(os.path.join(root, "llama-tiny-gqa-sharded", "reference.json"), encoding="utf-8"))
    if a["prompts"] != b["prompts"]:
        problem("llama-tiny-gqa and llama-tiny-gqa-sharded references differ")

    shutil.rmtree(staging, ignore_errors=True)
    write_readme(root, env, models_info)
    total = sum(s for _, s in dir_listing(root))
    print(f"wrote {root}: {total} bytes", flush=True)

    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tf:
            tf.add(root, arcname=os.path.basename(root))
        print(f"wrote {args.tar}: {os.path.getsize(args.tar)} bytes", flush=True)

    if PROBLEMS:
        print(f"{len(PROBLEMS)} PROBLEM(S):", *PROBLEMS, sep="\n  ", flush=True)
        sys.exit(1)
    print("all self-checks passed", flush=True)


if __name__ == "__main__":
    main()
