"""GET /healthz: each dependency's state, and 503 when any of them is down.

A load balancer takes a replica out of rotation on 503. The body names what is wrong:
the model (loading, failed) or the model server it streams from, the database, and
Redis when one is configured; the speech model and the spoken replies' voice are reported
but never fail the check (voice is optional, and loads on first use).
"""


def redis_check(redis) -> dict:
    """Whether Redis answers PING (`not used` without WEBBOT_REDIS_URL)."""
    if redis is None:
        return {"status": "not used"}
    try:
        redis.ping()
        return {"status": "ok"}
    except Exception as exc:
        return {"status": "error",
                "error": f"Redis cannot be reached ({type(exc).__name__}); check that it is running."}


def model_check(bot) -> dict:
    """The local model's (or the model server's tokenizer's) loading state; once loaded here, how it runs (device,
    dtype, and int8 when its weights are), or that its GPU failed since."""
    if bot.ready:
        running = {key: getattr(bot, key) for key in ("device", "dtype", "quant") if getattr(bot, key, None)}
        return {"status": "ok", "model": bot.name, **running}
    if bot.failure:
        return {"status": "error", "model": bot.name, "error": bot.failure}
    if bot.error:
        return {"status": "error", "model": bot.name, "error": bot.error}
    return {"status": "loading", "model": bot.name}


def tts_check(speaker) -> dict:
    """Spoken replies: off, or the default voice's state (reported, never failing the check)."""
    if not speaker.enabled:
        return {"status": "off"}
    state = "ok" if speaker.ready else "error" if speaker.error else "not loaded"
    return {"voice": speaker.name, "voices": list(speaker.sources), "status": state,
            **({"error": speaker.error} if speaker.error else {})}


def report(services) -> tuple[dict, int, dict]:
    """(body, status, headers) for /healthz, from the app's Services."""
    bot, speech = services.bot, services.transcriber
    checks = {"model": model_check(bot), "database": services.store.check(), "redis": redis_check(services.redis)}
    upstream = bot.upstream_check() if bot.ready else None
    if upstream is not None:
        checks["upstream"] = upstream
    failed = [name for name, check in checks.items() if check["status"] in ("error", "loading")]
    status = checks["model"]["status"] if checks["model"]["status"] != "ok" else "error" if failed else "ok"
    body = {"status": status, "model": bot.name, "checks": checks,
            "speech": {"model": speech.name, "backend": speech.backend_name,  # reported, never failing the check
                       "status": "ok" if speech.ready else "error" if speech.error else "not loaded"},
            "tts": tts_check(services.speaker)}
    if bot.error:
        body["error"] = f"The model could not be loaded: {bot.error}"
    elif failed and "error" in checks[failed[0]]:
        body["error"] = checks[failed[0]]["error"]  # a sentence the page shows as it is
    if not failed:
        return body, 200, {}
    return body, 503, {"Retry-After": "5"} if status == "loading" else {}
