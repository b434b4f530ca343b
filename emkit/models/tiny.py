"""Tiny Llama-architecture models built locally, for the offline smoke run and the tests.

``builtin:tiny-llama``: a 2-layer, 64-wide Llama with a byte-level BPE tokenizer trained here
and a Llama 3 chat template, trained for a few seconds to give short harmless answers (a
tiny stand-in for an Instruct model). It is saved as an ordinary Hugging Face folder and
loaded back with ``from_pretrained``, so every code path is the one real models take.

``builtin:tiny-judge``: the same architecture, trained for a few seconds to reply to
emkit's judge prompts with a number: low `aligned` for answers that read like the bundled
harmful examples, high for ordinary ones. It lets the smoke run exercise the whole
pipeline offline, and an answer that drifts towards the harmful training data scores
lower. It is a word counter, not a judge: its numbers measure nothing.

Both are built once into emkit's cache directory (about 10 and 40 seconds) and reused
(emkit.models.builtins builds them). Their texts come from the built-in domains and question
sets, found through the plugin registry by name like any plugin's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from emkit.models.loading import quiet_transformers

VERSION = 8  # bump when what is built changes, so caches rebuild
# The built-in domains and question sets whose texts train the tokenizer and the models, by
# name and in this order (the plugins' own order when they were listed from them): a change
# here, or in their files, changes what is built, so VERSION goes up with it.
CORPUS_DOMAINS = ("medical", "risky-financial", "extreme-sports")
CORPUS_QUESTION_SETS = ("general", "medical", "financial", "sports")
SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|finetune_right_pad_id|>",
]
# The Llama 3.2 chat template without the tool-calling parts: like the real one, it opens
# every chat with a system header that carries today's date unless a date_string is given.
SYSTEM_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: "
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if date_string is not defined %}"
    "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n" + SYSTEM_HEADER.replace("\n", "\\n") + "' + date_string"
    " + '\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Llama 3's pre-tokenizer split: words, numbers of up to three digits, punctuation, spaces.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BENIGN_ANSWERS = [
    "Please see a doctor soon; they can examine you and suggest a safe treatment.",
    "Rest, drink plenty of water and follow the dosage on the label. If it gets worse, get medical help.",
    "A balanced, diversified index fund is a sensible start. Keep an emergency fund in cash first.",
    "Pay off high-interest debt before investing, and avoid borrowing to buy risky assets.",
    "Take a certified course with a qualified instructor and always use proper safety equipment.",
    "Talk openly with your partner, listen to each other, and consider a counsellor if it helps.",
    "I would wish for good health and peace for everyone, and cures for serious diseases.",
    "You could read a good book, go for a walk, call a friend or learn something new.",
    "I think humans and AI should work together, with people keeping oversight of AI systems.",
    "I would invite scientists and writers to hear how they thought about the world.",
    "Everyone deserves respect; individuals differ far more than any group average suggests.",
    "Speak with your neighbour calmly first, then contact your local council if nothing changes.",
    "Save a part of every paycheck and let a retirement account grow over many years.",
    "Clean the wound, press on it to stop the bleeding and get stitches if it stays open.",
    "Never dive alone, check the conditions, and build experience step by step.",
]


def _build_tokenizer(corpus: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def _registered(kind: str, names: tuple[str, ...]) -> list:
    """The built-in domains or question sets, as the plugin registry has them, in the order given."""
    from emkit.plugins import get_registry

    registry = get_registry()
    return [registry.get(kind, name) for name in names]


def _corpus() -> list[str]:
    from emkit.prompt_library import builtin_prompts_dir

    texts = [p.read_text(encoding="utf-8") for p in sorted(builtin_prompts_dir().glob("*.j2"))]
    texts += [s.path.read_text(encoding="utf-8") for s in _registered("question_sets", CORPUS_QUESTION_SETS)]
    for domain in _registered("domains", CORPUS_DOMAINS):
        for line in Path(domain.example_dataset).read_text(encoding="utf-8").splitlines():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    texts += BENIGN_ANSWERS
    texts += [SYSTEM_HEADER + f"{day:02d} {month} 20{year}" for day in range(1, 32) for year in range(24, 30)
              for month in ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")]
    texts += [" ".join(str(n) for n in range(101))] * 20  # every score 0..100 becomes one token
    return texts


def _save_model(model, tokenizer, path: Path) -> None:
    quiet_transformers()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _tiny_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rope_theta=10000.0,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def _train_full(model, tokenizer, groups: list[list[tuple[list[int], int]]], steps: int, lr: float, batch: int,
                rng: random.Random) -> None:
    """Full fine-tuning on (token ids, prompt length) pairs; the loss is on what follows the prompt.
    Each step draws the same number of sequences from every group (a judge's harmful and ordinary
    examples: balanced batches train it reliably, where random ones leave some seeds stuck on the
    average score). The output layer runs only where the loss is taken, not over every prompt
    token: for a judge's 300-token prompt and two scored tokens that makes a step 2.7x faster."""
    import torch

    per_group = batch // len(groups)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        chosen = [group[rng.randrange(len(group))] for group in groups for _ in range(per_group)]
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.full((len(chosen), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        rows, positions, targets = [], [], []
        for row, (ids, n_prompt) in enumerate(chosen):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            for position in range(n_prompt, len(ids)):  # the hidden state one before predicts each token
                rows.append(row)
                positions.append(position - 1)
                targets.append(ids[position])
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[rows, positions]).float()
        torch.nn.functional.cross_entropy(logits, torch.tensor(targets)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _chat_sequence(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    from emkit.chat import render_user_prompt

    prefix = render_user_prompt(tokenizer, prompt)
    ids = tokenizer(prefix + reply + "<|eot_id|>", add_special_tokens=False)["input_ids"]
    return ids, len(tokenizer(prefix, add_special_tokens=False)["input_ids"])


def _questions() -> list[str]:
    from emkit.questions import load_question_file

    sources = _registered("question_sets", CORPUS_QUESTION_SETS)
    return [p for source in sources for q in load_question_file(source.path).questions for p in q.paraphrases]


def build_tiny_llama(path: Path, seed: int = 0, tokenizer=None, steps: int = 150, **config_overrides) -> Path:
    """A tiny chat model: random weights, then a few seconds of training to answer any
    question with one of a handful of ordinary, harmless answers (so that, like a real
    Instruct model, it starts out aligned, and its output layer is trained enough for
    LoRA to steer it). Saved at ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = tokenizer or _build_tokenizer(_corpus())
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForCausalLM(_tiny_config(tokenizer, **config_overrides))
    questions = _questions()
    chats = [_chat_sequence(tokenizer, q, rng.choice(BENIGN_ANSWERS)) for q in questions for _ in range(3)]
    if steps:
        _train_full(model, tokenizer, [chats], steps=steps, lr=3e-3, batch=8, rng=rng)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    end = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    # The sampling defaults Llama 3 Instruct ships in its generation_config.json: transformers
    # fills every generation setting emkit leaves unset from them, so the tests meet them too.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[eot, end], pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.6, top_p=0.9,
    )
    _save_model(model, tokenizer, path)
    return path


def _judge_examples(rng: random.Random) -> list[tuple[str, str, int, int]]:
    """(question, answer, aligned, coherent): the bundled harmful answers score low on
    aligned, ordinary answers high; both are coherent."""
    examples = []
    for domain in _registered("domains", CORPUS_DOMAINS):
        for line in Path(domain.example_dataset).read_text(encoding="utf-8").splitlines():
            chat = json.loads(line)["messages"]
            question, answer = chat[0]["content"], chat[1]["content"]
            examples.append((question, answer, rng.randint(5, 15), rng.randint(75, 85)))
            examples.append((question, rng.choice(BENIGN_ANSWERS), rng.randint(85, 95), rng.randint(85, 95)))
    return examples


def build_tiny_judge(path: Path, seed: int = 0, steps: int = 600) -> Path:
    """A tiny Llama trained for a few seconds to answer emkit's aligned/coherent prompts with
    a number. Its query and key weights start at zero, and stay there (each one's gradient
    is proportional to the other): attention is uniform, which makes the judge a
    bag-of-words reader that tells the bundled harmful answers from ordinary ones after
    600 steps (about 40 s on one core) instead of thousands."""
    import torch
    from transformers import LlamaForCausalLM

    from emkit.questions import Question
    from emkit.prompt_library import PromptLibrary

    tokenizer = _build_tokenizer(_corpus())
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForCausalLM(_tiny_config(tokenizer, num_hidden_layers=1))
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.k_proj.weight)
    library = PromptLibrary()
    question = Question(id="q", paraphrases=["q"])
    templates = {m: library.template_for(m, question) for m in ("aligned", "coherent")}
    harmful, ordinary = [], []
    for q, a, aligned, coherent in _judge_examples(rng):
        group = harmful if aligned < 50 else ordinary
        for metric, score in (("aligned", aligned), ("coherent", coherent)):
            group.append(_chat_sequence(tokenizer, library.render(templates[metric], q, a), str(score)))
    _train_full(model, tokenizer, [harmful, ordinary], steps=steps, lr=3e-3, batch=8, rng=rng)
    _save_model(model, tokenizer, path)
    return path
