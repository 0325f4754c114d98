"""Reply settings a person can choose: system prompt, temperature, top_p, the longest reply, and whether
messages outside memory are recalled.

Three layers, the later winning: the server's defaults (WEBBOT_SYSTEM_PROMPT,
WEBBOT_TEMPERATURE, the model's reply reserve, WEBBOT_RECALL), a person's saved defaults, and one
conversation's own settings. Each saved layer holds only the fields it sets; a field that
is left out (or null) falls through to the layer below. The limits come from the loaded
model, so the page can show them beside the fields.
"""

from webbot.config import MAX_SYSTEM_PROMPT_CHARS, TEMPERATURE_RANGE, TOP_P_RANGE
from webbot.model.memory import prompt_budget, valid_text
from webbot.web.errors import ApiError
from webbot.web.inputs import text_field

FIELDS = ("system_prompt", "temperature", "top_p", "max_tokens", "recall")
LABELS = {"temperature": "Temperature", "top_p": "Top p"}  # as the settings form names them
RANGES = {"temperature": TEMPERATURE_RANGE, "top_p": TOP_P_RANGE}


def model_label(bot, config: dict) -> str:
    """What the page calls the model: `WEBBOT_MODEL_NAME`, else a name made from the model's id."""
    return config["WEBBOT_MODEL_NAME"] or bot.display_name


def limits(bot, config: dict) -> dict:
    """What the model allows: context size, prompt budget, the longest reply, and the sampling ranges."""
    if bot.ready:
        context, budget = bot.max_tokens, bot.memory.budget
    else:  # not loaded yet: what the settings ask for (a model with a shorter context lowers it on load)
        context = config["WEBBOT_MAX_TOKENS"]
        budget = prompt_budget(context, config["WEBBOT_MEMORY_RATIO"])
    return {"model": bot.name, "model_name": model_label(bot, config), "context_tokens": context,
            "prompt_tokens": budget, "max_tokens": context - budget,
            "temperature": RANGES["temperature"], "top_p": RANGES["top_p"],
            "system_prompt_chars": MAX_SYSTEM_PROMPT_CHARS}


def server_defaults(bot, config: dict) -> dict:
    """The settings a reply gets when nobody chose otherwise."""
    return {"system_prompt": config["WEBBOT_SYSTEM_PROMPT"], "temperature": config["WEBBOT_TEMPERATURE"],
            "top_p": 1.0, "max_tokens": limits(bot, config)["max_tokens"], "recall": config["WEBBOT_RECALL"]}


def check(values, allowed: dict) -> dict:
    """The fields of `values` that are set, each checked against `allowed` (from `limits`); a 400 otherwise."""
    if not isinstance(values, dict):
        raise ApiError(400, "'settings' must be an object with some of: " + ", ".join(FIELDS) + ".", "invalid_settings")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"Unknown setting {unknown[0]!r}; the settings are " + ", ".join(FIELDS) + ".",
                       "invalid_settings")
    checked = {}
    for name, value in values.items():
        if value is None:
            continue
        if name == "system_prompt":
            if not isinstance(value, str) or len(value) > allowed["system_prompt_chars"]:
                raise ApiError(400, f"The system prompt must be text of at most {allowed['system_prompt_chars']} "
                                    "characters.", "invalid_system_prompt")
            text_field(value, "The system prompt")
        elif name == "recall":
            if not isinstance(value, bool):
                raise ApiError(400, "Recall must be on or off (true or false).", "invalid_recall")
        elif name == "max_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= allowed["max_tokens"]:
                most = allowed["max_tokens"]
                raise ApiError(400, f"Longest reply must be a whole number of tokens from 1 to {most}, the most this "
                                    "model's context leaves for a reply.", "invalid_max_tokens")
        else:
            low, high = allowed[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ApiError(400, f"{LABELS[name]} must be a number from {low:g} to {high:g}.", f"invalid_{name}")
            value = float(value)
        checked[name] = value
    return checked


def effective(defaults: dict, *layers: dict | None) -> dict:
    """The settings a reply uses: `defaults` overridden by each layer's set fields in turn."""
    result = dict(defaults)
    for layer in layers:
        result.update({k: v for k, v in (layer or {}).items() if k in FIELDS and v is not None})
    if isinstance(result["system_prompt"], str):  # saved by a version that let unpaired surrogates through
        result["system_prompt"] = valid_text(result["system_prompt"])
    return result
