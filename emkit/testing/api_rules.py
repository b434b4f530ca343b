"""What OpenAI's and Anthropic's APIs refuse, and how a reasoning model spends its budget.

The loopback judge server applies these rules so that a client which the real service
would answer with a 400 gets that 400 in the tests too, with the real message. The rules
are the services' documented behaviour (platform.openai.com/docs/api-reference/chat,
platform.openai.com/docs/guides/reasoning, docs.anthropic.com/en/api/messages):

- OpenAI refuses a parameter it does not know ("Unrecognized request argument supplied").
- Reasoning models (o1, o3, o4-mini, gpt-5, gpt-5-mini, ...) take ``max_completion_tokens``
  and refuse ``max_tokens``; they take only the default temperature and top_p, and refuse
  logprobs. Their reasoning tokens come out of ``max_completion_tokens``: with too small a
  budget the reply has empty content and finish_reason "length". gpt-5.1 and later reason
  only when ``reasoning_effort`` is not "none" (their default), and then follow the same rules.
- ``top_logprobs`` needs ``logprobs: true`` and is at most 20.
- Anthropic requires ``max_tokens``, refuses fields it does not know and a temperature above 1.
"""

from __future__ import annotations

import re

OPENAI_PARAMS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "user", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
    "service_tier", "store", "metadata", "modalities", "prediction", "audio", "verbosity", "safety_identifier",
    "prompt_cache_key", "web_search_options",
}
ANTHROPIC_PARAMS = {
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
}
REASONING_TOKENS = 160  # what the loopback's reasoning model "thinks" before it answers
_ALWAYS_REASONING = re.compile(r"^(o\d|gpt-5(-mini|-nano|-pro)?(-\d{4}-\d{2}-\d{2})?$)")
_REASONING_UNLESS_NONE = re.compile(r"^gpt-5\.\d+(?!.*-chat)")  # gpt-5.1, gpt-5.2: effort "none" by default
EFFORTS = {"minimal", "low", "medium", "high"}


def _error(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def reasons(body: dict) -> bool:
    """Whether this OpenAI request is answered by a model that reasons before it replies."""
    model = str(body.get("model") or "").split("/")[-1]
    if _ALWAYS_REASONING.match(model):
        return True
    if _REASONING_UNLESS_NONE.match(model):
        return body.get("reasoning_effort", "none") != "none"
    return False


def reasoning_model(model: str) -> bool:
    model = model.split("/")[-1]
    return bool(_ALWAYS_REASONING.match(model) or _REASONING_UNLESS_NONE.match(model))


def openai_refusal(body: dict) -> dict | None:
    """The error body OpenAI's chat completions endpoint answers this request with, or None."""
    if not body.get("model"):
        return _error("you must provide a model parameter", "model")
    if not body.get("messages"):
        return _error("[] is too short - 'messages'", "messages")
    for name in body:
        if name not in OPENAI_PARAMS:
            return _error(f"Unrecognized request argument supplied: {name}")
    if "top_logprobs" in body:
        if not body.get("logprobs"):
            return _error("Invalid value for 'top_logprobs': 'logprobs' must be set to true.", "top_logprobs")
        if not 0 <= int(body["top_logprobs"]) <= 20:
            return _error("Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20.",
                          "top_logprobs", "integer_above_max_value")
    model = str(body["model"])
    effort = body.get("reasoning_effort")
    if not reasoning_model(model):
        if effort is not None:
            return _error("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                          "reasoning_effort", "unsupported_parameter")
        return None
    allowed = EFFORTS | ({"none"} if model.split("/")[-1].startswith("gpt-5.") else set())
    if effort is not None and effort not in allowed:
        return _error(f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this model. "
                      f"Supported values are: {', '.join(sorted(allowed))}.", "reasoning_effort", "unsupported_value")
    if "max_tokens" in body:
        return _error("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    if not reasons(body):
        return None
    for name in ("temperature", "top_p"):
        if name in body and body[name] != 1:
            return _error(f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the "
                          f"default (1) value is supported.", name, "unsupported_value")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name):
            return _error(f"Unsupported parameter: '{name}' is not supported with this model.", name,
                          "unsupported_parameter")
    return None


def spend_reasoning_budget(body: dict, completion: dict) -> dict:
    """A reasoning model's reply: reasoning tokens first, out of max_completion_tokens."""
    if not reasons(body):
        return completion
    thinking = 0 if body.get("reasoning_effort") == "minimal" else REASONING_TOKENS
    usage = completion.setdefault("usage", {})
    answer_tokens = int(usage.get("completion_tokens") or 1)
    budget = body.get("max_completion_tokens")
    choice = completion["choices"][0]
    choice.pop("logprobs", None)
    if budget is not None and budget < thinking + answer_tokens:
        choice["message"]["content"] = ""
        choice["finish_reason"] = "length"
        spent, thinking = budget, min(budget, thinking)
    else:
        choice["finish_reason"] = "stop"
        spent = thinking + answer_tokens
    usage["completion_tokens"] = spent
    usage["total_tokens"] = int(usage.get("prompt_tokens") or 0) + spent
    usage["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return completion


# --- Anthropic's Messages API ------------------------------------------------------------

def _anthropic_error(message: str) -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def anthropic_refusal(body: dict) -> dict | None:
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return _anthropic_error(f"{name}: Field required")
    for name in body:
        if name not in ANTHROPIC_PARAMS:
            return _anthropic_error(f"{name}: Extra inputs are not permitted")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return _anthropic_error("max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return _anthropic_error("temperature: Input should be less than or equal to 1")
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        if temperature not in (None, 1):
            return _anthropic_error("`temperature` may only be set to 1 when thinking is enabled or in "
                                    "interleaved thinking mode.")
        if not 1024 <= int(thinking.get("budget_tokens") or 0) < body["max_tokens"]:
            return _anthropic_error("thinking.budget_tokens: must be at least 1024 and less than max_tokens")
    return None


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def anthropic_as_openai(body: dict) -> dict:
    """An Anthropic request in OpenAI's shape, for responders that read ``messages``."""
    messages = [{"role": "system", "content": _text(body["system"])}] if body.get("system") else []
    messages += [{"role": m.get("role"), "content": _text(m.get("content"))} for m in body.get("messages", [])]
    out = {"model": body.get("model"), "messages": messages, "max_tokens": body.get("max_tokens")}
    if "temperature" in body:
        out["temperature"] = body["temperature"]
    return out


def openai_as_anthropic(completion: dict, request: dict) -> dict:
    choice = completion["choices"][0]
    usage = completion.get("usage") or {}
    return {
        "id": "msg_emkit_test", "type": "message", "role": "assistant", "model": request.get("model"),
        "content": [{"type": "text", "text": choice["message"].get("content") or ""}],
        "stop_reason": "max_tokens" if choice.get("finish_reason") == "length" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }
