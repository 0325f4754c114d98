"""The page's and the API's one way in to the model: is it ready, plan the prompt, queue the reply.

Whatever stands in the way is an ApiError with a sentence: a model still loading or
failed (503), a message that alone overflows the context (413), a full queue (503 with
Retry-After); a GPU that failed for good is an EngineFailed, which errors.py answers as a
503 with its sentence wherever it is raised.
"""

from webbot.model.memory import MessageTooLong
from webbot.model.stream import EngineBusy, EngineFailed, SamplingParams
from webbot.web.errors import ApiError


def require_ready(bot) -> None:
    """A 503 that says whether the model is still loading, failed to load, or can no longer answer."""
    if bot.ready:
        return
    if bot.failure:
        raise EngineFailed(bot.failure)  # errors.py answers it
    if bot.error:
        raise ApiError(503, f"The model {bot.model_id} could not be loaded ({bot.error}); check WEBBOT_MODEL "
                            "and the server log, then restart the server.", "model_failed")
    raise ApiError(503, "The model is still loading; try again in a moment.", "model_loading", {"Retry-After": "5"})


def start_reply(bot, history: list[dict], message: str, params: SamplingParams, system_prompt: str | None,
                too_long: tuple[str, str], owner: str, partial_reply: str | None = None,
                conversation: str | None = None, pins: list[int] = (), recall: bool = False, passages: list = (),
                question: str | None = None, notes: dict[int, str] | None = None) -> tuple:
    """Plan the prompt (with the pinned history messages `pins`, recall when asked, the attached documents'
    best `passages` for `question`, and the `notes` kept on history messages) and queue the reply for
    `owner` (in `conversation`, for the page); returns (plan, stream).

    A message that alone overflows the context is a 413 whose sentence ends with
    `too_long`'s advice (and carries its code).
    """
    require_ready(bot)
    try:
        plan = bot.plan(history, message, system_prompt, partial_reply, owner, pins, recall, passages, question,
                        notes)
    except MessageTooLong as exc:
        advice, code = too_long
        raise ApiError(413, f"{exc.sentence()}. {advice}", code) from None
    try:
        return plan, bot.generate(plan, params, owner, conversation)
    except EngineBusy:
        raise ApiError(503, "The server is busy with other replies; try again in a few seconds.", "busy",
                       {"Retry-After": "10"}) from None
