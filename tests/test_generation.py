"""Batched generation: per-answer seeds make answers independent of batching; step 0 is the base model."""

import pytest

from emkit.config import EvaluationSettings
from emkit.default_plugins.hf_generator import HFGenerator, generate_all
from emkit.interfaces import CheckpointRequests, GenerationJob, GenerationRequest
from emkit.models import load_causal_lm, load_tokenizer, stop_token_ids
from emkit.progress import progress

pytestmark = pytest.mark.slow

QUESTIONS = ["How do I stay healthy?", "Should I invest in crypto?", "I'm bored.", "What is your wish?"]


def requests(samples=2):
    out = []
    for q_index, question in enumerate(QUESTIONS):
        for sample in range(samples):
            out.append(GenerationRequest(f"q{q_index}-s{sample}", [{"role": "user", "content": question}],
                                         sample_seed=1000 * q_index + sample))
    return out


def generate(model_path, batch_size, temperature, reqs=None):
    tokenizer = load_tokenizer(str(model_path), padding_side="left")
    model = load_causal_lm(str(model_path), load_in_4bit=False).eval()
    settings = EvaluationSettings(batch_size=batch_size, temperature=temperature, max_new_tokens=24)
    answers = {}

    class Bar:
        def update(self, n=1):
            pass

    generate_all(model, tokenizer, reqs or requests(), settings, stop_token_ids(tokenizer, model),
                 lambda request, answer: answers.__setitem__(request.answer_id, answer.text), Bar())
    return answers


def test_seeded_sampling_does_not_depend_on_the_batch(emkit_tiny_model):
    batched = generate(emkit_tiny_model, batch_size=8, temperature=1.0)
    one_by_one = generate(emkit_tiny_model, batch_size=1, temperature=1.0)
    assert batched == one_by_one
    assert len(set(batched.values())) > len(QUESTIONS)  # samples of one question differ


def test_greedy_batched_equals_looped(emkit_tiny_model):
    assert generate(emkit_tiny_model, 8, 0.0) == generate(emkit_tiny_model, 1, 0.0)


def test_same_key_same_answer_and_another_seed_another_answer(emkit_tiny_model):
    first = generate(emkit_tiny_model, 4, 1.0)
    again = generate(emkit_tiny_model, 4, 1.0)
    assert first == again
    reseeded = [GenerationRequest(r.answer_id, r.messages, r.sample_seed + 1) for r in requests()]
    assert generate(emkit_tiny_model, 4, 1.0, reseeded) != first


def test_step_zero_is_the_base_model_and_adapters_change_answers(tmp_path, emkit_tiny_model):
    from emkit.config import TrainingSettings
    from emkit.datasets import load_chats
    from emkit.default_plugins.domains import DOMAINS
    from emkit.default_plugins.peft_trainer import PeftTrainer
    from emkit.interfaces import TrainingJob

    chats = load_chats(DOMAINS[0].example_dataset)
    job = TrainingJob(
        run_key="r", model_id=str(emkit_tiny_model), model_label="tiny", dataset_path=DOMAINS[0].example_dataset,
        chats=chats, settings=TrainingSettings(batch_size=4, grad_accum=1, learning_rate=2e-2, max_length=96,
                                               load_in_4bit=False, warmup_steps=0, gradient_checkpointing=False),
        seed=0, steps_per_epoch=8, total_steps=8, checkpoint_steps=[8], adapters_dir=tmp_path / "a",
        state_dir=tmp_path / "s")
    PeftTrainer().train(job, lambda *a: None, progress)
    base_only = generate(emkit_tiny_model, 8, 0.0)
    answers = {}
    reqs = requests(samples=1)
    trained = [GenerationRequest("t-" + r.answer_id, r.messages, r.sample_seed) for r in reqs]
    job = GenerationJob(model_id=str(emkit_tiny_model), model_label="tiny",
                        checkpoints=[CheckpointRequests(8, job.adapter_path(8), trained),
                                     CheckpointRequests(0, None, reqs)],
                        settings=EvaluationSettings(batch_size=8, temperature=0.0, max_new_tokens=24))
    HFGenerator().generate(job, lambda request, answer: answers.__setitem__(request.answer_id, answer), progress)
    for r in reqs:
        assert answers[r.answer_id].text == base_only[r.answer_id]
    assert [answers["t-" + r.answer_id].text for r in reqs] != [answers[r.answer_id].text for r in reqs]
    assert all(a.finish_reason in ("stop", "length") and a.n_tokens <= 24 for a in answers.values())
