"""One command on a lent GPU (issue 23): what the card is, whether the engine is right on it, how fast it is
against the card's bandwidth roofline, and whether the failure drills end every reply.

One JSON line per stage on stdout (and in --out), each with "stage", "ok" and its figures;
a stage that fails says why and the others still run:

  env        the card, compute capability, native bf16, the dtype `auto` picks, faster-whisper's CUDA
             libraries (a moment of silence transcribed)
  engine     the tiny model through the engine: greedy tokens against `model.generate`, 8 sampled streams
  speed      the Llama-3.2-1B shape (random weights) through ChatBot: time to first token, decode tok/s at
             batch 1/8/32 x 512/4k context, against the roofline (weights + KV read once per step at the
             copy bandwidth measured here), peak memory
  graphs     decode steps replayed from CUDA graphs (WEBBOT_CUDA_GRAPHS=on, never run on a GPU before this):
             greedy tokens of 3 replies of different lengths equal to eager steps', then decode tok/s of the
             1B shape at batch 1/8/32 x 512 context, graphs against eager side by side (on CPU: the same
             fixed-shape steps without capture, tokens only)
  profile    kernels (device ops) and host syncs per decode step
  oom        an out-of-memory error in every pass for a while: every stream ends, the worker lives, the next
             reply is whole; one OOM alone is retried and changes no token
  whisper    decode tok/s alone and beside a transcription (transformers Whisper on the same device)
  nan, oov   scores that are not numbers, a token id past the vocabulary: each in a child process, since on
             CUDA a failure there could poison the process's GPU

    .venv/bin/python -m bench.gpu_check                          # on the GPU: under 10 minutes
    .venv/bin/python -m bench.gpu_check --docs                   # ... and write the figures into docs/benchmarks.md
    .venv/bin/python -m bench.gpu_check --device cpu --small     # the dry run the test suite runs (~1 minute)
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "engine", "speed", "graphs", "profile", "oom", "whisper", "nan", "oov")
DOCS_MARK = "<!-- gpu_check -->"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_bot(model: Path, device: str, **options):
    from chat_bot import ChatBot

    return ChatBot(str(model), device=device, kv_reuse=False, **options).load()


def tiny_bot(device: str, **options):
    from harness import assets

    return load_bot(assets.tiny_llama_dir(), device, max_tokens=1024, **options)


def read(stream, timeout: float = 300) -> str:
    text = []
    while (piece := stream.next_piece(timeout=timeout)) is not None:
        text.append(piece)
    return "".join(text)


def greedy(tokens: int):
    from webbot.model.stream import SamplingParams

    return SamplingParams(max_new_tokens=tokens, temperature=0)


def synthetic_prompts(vocab: int, batch: int, context: int) -> list[list[int]]:
    """`batch` different prompts of `context` token ids, spread over the vocabulary."""
    return [[1000 + (i * 7919 + j * 104729) % (vocab - 2000) for j in range(context)] for i in range(batch)]


def timed_decode(bot, prompts: list[list[int]], new_tokens: int) -> tuple[float, float | None]:
    """Greedy replies to `prompts` submitted together: seconds to the first token, and decode tokens per second
    from when every reply has its first token until all end."""
    started = time.perf_counter()
    streams = [bot.engine.submit(p, greedy(new_tokens)) for p in prompts]
    streams[0].next_piece(timeout=600)
    ttft = time.perf_counter() - started
    while not all(s.generated_ids for s in streams):  # each has its first token when its first piece came
        time.sleep(0.001)
    all_decoding, counted = time.perf_counter(), sum(len(s.generated_ids) for s in streams)
    for stream in streams:
        read(stream)
    seconds = time.perf_counter() - all_decoding
    return ttft, (sum(len(s.generated_ids) for s in streams) - counted) / seconds if seconds > 0 else None


# --- stages -----------------------------------------------------------------------------------------------

def stage_env(args) -> dict:
    import platform

    import torch

    from webbot.model.loading import resolve_device_dtype

    out = {"torch": torch.__version__, "device": args.device, "auto_dtype": resolve_device_dtype(args.device)[1]}
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(args.device))
        out.update(card=props.name, capability=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 1e9,
                   native_bf16=torch.cuda.is_bf16_supported(including_emulation=False), cuda=torch.version.cuda)
    else:
        out.update(card=platform.processor() or platform.machine(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability())
    try:
        from harness import assets
        from webbot.voice.whisper import FasterWhisperBackend

        FasterWhisperBackend(str(assets.whisper_tiny_en_ct2_dir()), args.device)  # on CUDA: the library check
        out["faster_whisper"] = "ok"
    except Exception as exc:
        out["faster_whisper"] = f"{type(exc).__name__}: {exc}"
    return out


def stage_engine(args) -> dict:
    import torch

    from webbot.model.stream import SamplingParams

    bot = tiny_bot(args.device)
    try:
        ids = bot.memory.render([{"role": "user", "content": "Tell me a story about a robot."}])
        stream = bot.engine.submit(ids, greedy(24))
        read(stream)
        engine = bot.engine
        with torch.inference_mode():
            out = engine.model.generate(torch.tensor([ids], device=engine.model.device), max_new_tokens=24,
                                        do_sample=False, eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id)
        expected = out[0, len(ids):].tolist()
        got = stream.generated_ids
        first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
        sampled = [bot.engine.submit(ids, SamplingParams(max_new_tokens=16, temperature=1.0)) for _ in range(8)]
        for s in sampled:
            read(s)
        return {"ok": got == expected, "dtype": bot.dtype, "greedy_equal": got == expected, "first_difference": first,
                "sampled_streams": len(sampled), "sampled_finished": sum(s.finish_reason in ("length", "stop")
                                                                         for s in sampled)}
    finally:
        bot.close()


def copy_bandwidth(device: str) -> float:
    """Bytes per second one large copy moves on `device` (read and write counted)."""
    import torch

    data = torch.empty(256 * 2**20 if device == "cpu" else 2 * 2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(data)
    target.copy_(data)
    sync(device)
    started = time.perf_counter()
    for _ in range(5):
        target.copy_(data)
    sync(device)
    return 2 * 5 * data.numel() / (time.perf_counter() - started)


def stage_speed(args) -> dict:
    import torch

    from bench.common import llama32_1b_random_dir
    from harness import assets
    from webbot.model.loading import kv_bytes_per_token

    model = assets.tiny_llama_dir() if args.small else llama32_1b_random_dir()
    batches, contexts = ((1, 2), (64, 256)) if args.small else ((1, 8, 32), (512, 4096))
    new_tokens = 8 if args.small else 64
    bot = load_bot(model, args.device, max_tokens=max(contexts) + 256, max_batch=max(batches))
    try:
        weights = sum(t.numel() * t.element_size() for t in [*bot.engine.model.parameters(),
                                                              *bot.engine.model.buffers()])
        per_token = kv_bytes_per_token(bot.engine.model, bot.dtype)
        bandwidth = copy_bandwidth(args.device)
        vocab = bot.engine.model.get_input_embeddings().num_embeddings
        rows = []
        for context in contexts:
            for batch in batches:
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                ttft, rate = timed_decode(bot, synthetic_prompts(vocab, batch, context), new_tokens)
                step_bytes = weights + batch * (context + new_tokens // 2) * per_token
                rows.append({"context": context, "batch": batch, "ttft_s": ttft, "decode_tok_s": rate,
                             "roofline_tok_s": batch * bandwidth / step_bytes,
                             "peak_gb": (torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else
                                         resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9})
                row = rows[-1]
                row["of_roofline"] = row["decode_tok_s"] / row["roofline_tok_s"] if row["decode_tok_s"] else None
        return {"ok": True, "model": model.name, "dtype": bot.dtype, "quant": bot.quant, "weights_gb": weights / 1e9,
                "kv_bytes_per_token": per_token, "copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}
    finally:
        bot.close()


def graphed_bot(model: Path, device: str, **options):
    """A bot whose decode steps replay CUDA graphs; off CUDA, the same fixed-shape steps run without capture."""
    from functools import partial

    from webbot.model.fixed_steps import FixedSteps

    bot = load_bot(model, device, cuda_graphs=device.startswith("cuda"), **options)
    if not device.startswith("cuda"):
        bot.engine.fixed_steps = partial(FixedSteps.for_model, bot.engine.model, slots=bot.engine.max_batch,
                                         tokens=bot.max_tokens, capture=False)
    return bot


def stage_graphs(args) -> dict:
    from bench.common import llama32_1b_random_dir
    from harness import assets

    questions = ["Hi", "Tell me a long story about a robot who learns to paint, with three chapters.",
                 "Name five colours."]
    tokens = {}
    for kind in ("eager", "graphs"):
        make = graphed_bot if kind == "graphs" else load_bot
        bot = make(assets.tiny_llama_dir(), args.device, max_tokens=1024)
        try:
            streams = [bot.engine.submit(bot.memory.render([{"role": "user", "content": q}]), greedy(n))
                       for q, n in zip(questions, (40, 25, 33), strict=True)]
            for stream in streams:
                read(stream)
            tokens[kind] = [s.generated_ids for s in streams]
            captured = len([g for g in (bot.engine._steps.graphs.values() if bot.engine._steps else ()) if g])
        finally:
            bot.close()
    out = {"ok": tokens["graphs"] == tokens["eager"], "greedy_equal": tokens["graphs"] == tokens["eager"],
           "graphs_captured": captured, "mode": "graphs" if args.device.startswith("cuda") else "fixed shapes, eager"}
    if args.small:
        return out
    model, context, rows = llama32_1b_random_dir(), 512, []
    bots = {"eager": load_bot(model, args.device, max_tokens=context + 256, max_batch=32),
            "graphs": graphed_bot(model, args.device, max_tokens=context + 256, max_batch=32)}
    try:
        vocab = bots["eager"].engine.model.get_input_embeddings().num_embeddings
        for batch in (1, 8, 32):
            prompts = synthetic_prompts(vocab, batch, context)
            rates = {kind: timed_decode(bot, prompts, 64)[1] for kind, bot in bots.items()}
            rows.append({"batch": batch, "context": context, **{f"{k}_tok_s": v for k, v in rates.items()},
                         "graphs_over_eager": rates["graphs"] / rates["eager"]})
    finally:
        for bot in bots.values():
            bot.close()
    return {**out, "rows": rows}


def stage_profile(args) -> dict:
    """Ten decode steps as the engine runs them without graphs (the model's forward over the pool of slots, then
    the sampler), on this thread so that the profiler sees every op: device kernels, host syncs and aten ops per
    step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from webbot.model.decoding import sample_tokens
    from webbot.model.kv_buffer import buffered_cache
    from webbot.model.kv_pool import SlotPool

    bot = tiny_bot(args.device)
    try:
        model, device = bot.engine.model, bot.engine.model.device
        ids = bot.memory.render([{"role": "user", "content": "Count from one to a hundred."}])
        params = [greedy(1)]
        with torch.inference_mode():
            prompt = buffered_cache(None, room=0)
            out = model(input_ids=torch.tensor([ids], device=device), past_key_values=prompt, use_cache=True,
                        logits_to_keep=1)
            token = sample_tokens(out.logits[:, -1], params)[0]
            pool = SlotPool.like([(layer.keys, layer.values) for layer in prompt.layers])
            pool.add([(layer.keys, layer.values) for layer in prompt.layers])

            def step():
                nonlocal token
                cache, mask, positions = pool.prepare()
                out = model(input_ids=torch.tensor([[token]], device=device), position_ids=positions,
                            attention_mask=mask, past_key_values=cache, use_cache=True)
                pool.advance()
                token = sample_tokens(out.logits[:, -1], params)[0]

            for _ in range(3):
                step()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(10):
                    step()
        events = prof.events()
        kernels = sum(1 for e in events if str(getattr(e, "device_type", "")).endswith("CUDA"))
        syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize")
                    or e.name.startswith("cudaMemcpy"))
        ops = sum(1 for e in events if e.name.startswith("aten::"))
        return {"ok": ops > 0, "kernels_per_step": kernels / 10, "syncs_per_step": syncs / 10,
                "aten_ops_per_step": ops / 10, "host_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1e4}
    finally:
        bot.close()


def stage_oom(args) -> dict:
    import torch

    bot = tiny_bot(args.device, max_batch=4)
    try:
        ids = bot.memory.render([{"role": "user", "content": "Tell me a long story."}])
        expected = bot.engine.submit(ids, greedy(20))
        read(expected)
        failing = {"left": 0}

        def oom(module, inputs):
            if failing["left"] > 0:
                failing["left"] -= 1
                raise torch.OutOfMemoryError("CUDA out of memory (gpu_check's drill)")

        hook = bot.engine.model.model.layers[-1].register_forward_pre_hook(oom)
        failing["left"] = 1  # one OOM: the pass is run again, and changes nothing
        retried = bot.engine.submit(ids, greedy(20), owner="retried")
        read(retried)
        streams = [bot.engine.submit(ids, greedy(20), owner=f"drill{i}") for i in range(4)]
        time.sleep(0.05)
        failing["left"] = 10**6  # every pass fails for a while: every stream must end
        ended = []
        for stream in streams:
            try:
                read(stream, timeout=120)
            except Exception as exc:
                ended.append(type(exc).__name__)
            else:
                ended.append(stream.finish_reason)
        failing["left"] = 0
        hook.remove()
        after = bot.engine.submit(ids, greedy(20), owner="after")
        read(after)
        ok = (retried.generated_ids == expected.generated_ids and len(ended) == 4
              and after.generated_ids == expected.generated_ids and bot.engine._worker.is_alive())
        return {"ok": ok, "retried_equal": retried.generated_ids == expected.generated_ids, "ended": ended,
                "worker_alive": bot.engine._worker.is_alive(), "next_reply_whole": after.generated_ids ==
                expected.generated_ids}
    finally:
        bot.close()


def stage_whisper(args) -> dict:
    from bench.common import llama32_1b_random_dir
    from harness import assets
    from harness.audio import speak
    from speech import Transcriber

    bot = tiny_bot(args.device) if args.small else load_bot(llama32_1b_random_dir(), args.device, max_tokens=2048)
    transcriber = Transcriber(str(assets.whisper_tiny_en_dir()), "transformers", args.device).load()
    clip = speak("What is the capital of France? Tell me about its history.")
    ids = bot.memory.render([{"role": "user", "content": "Write a long story."}])
    tokens = 16 if args.small else 96

    def rate() -> float:
        stream = bot.engine.submit(ids, greedy(tokens))
        stream.next_piece(timeout=300)
        started, first = time.perf_counter(), len(stream.generated_ids)
        read(stream)
        return (len(stream.generated_ids) - first) / (time.perf_counter() - started)

    try:
        alone = rate()
        heard = {}
        worker = threading.Thread(target=lambda: heard.update(text=transcriber.transcribe_bytes(clip).text))
        worker.start()
        beside = rate()
        worker.join()
        return {"ok": "capital" in heard.get("text", "").lower(), "decode_tok_s_alone": alone,
                "decode_tok_s_beside_transcription": beside, "ratio": beside / alone, "heard": heard.get("text")}
    finally:
        bot.close()


CHILD = {  # each drill in its own process: on CUDA a failure could poison the process's GPU
    "nan": """
import torch, json
from bench.gpu_check import tiny_bot, read, greedy
bot = tiny_bot(DEVICE)
ids = bot.memory.render([{"role": "user", "content": "Hello"}])
hook = bot.engine.model.lm_head.register_forward_hook(lambda m, i, out: out.fill_(float("nan")))
stream = bot.engine.submit(ids, greedy(8))
try:
    read(stream); ended = "no error"
except Exception as exc:
    ended = type(exc).__name__
hook.remove()
after = bot.engine.submit(ids, greedy(8)); read(after)
print(json.dumps({"ok": ended == "NoUsableToken" and len(after.generated_ids) == 8, "ended": ended,
                  "next_reply_tokens": len(after.generated_ids), "ready": bot.ready}))
""",
    "oov": """
import json
from bench.gpu_check import tiny_bot, read, greedy
bot = tiny_bot(DEVICE)
rows = bot.engine.model.get_input_embeddings().num_embeddings
try:
    bot.engine.submit([1, rows + 5], greedy(4)); refused = None
except ValueError as exc:
    refused = str(exc)
ids = bot.memory.render([{"role": "user", "content": "Hello"}])
after = bot.engine.submit(ids, greedy(8)); read(after)
print(json.dumps({"ok": bool(refused) and len(after.generated_ids) == 8, "refused": refused, "ready": bot.ready}))
""",
}


def stage_child(name: str, args) -> dict:
    code = CHILD[name].replace("DEVICE", repr(args.device))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- running and reporting ----------------------------------------------------------------------------------

def run_stage(name: str, args) -> dict:
    functions = {"env": stage_env, "engine": stage_engine, "speed": stage_speed, "graphs": stage_graphs,
                 "profile": stage_profile,
                 "oom": stage_oom, "whisper": stage_whisper}
    started = time.perf_counter()
    try:
        result = stage_child(name, args) if name in CHILD else functions[name](args)
        result.setdefault("ok", True)
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    return {"stage": name, **result, "seconds": time.perf_counter() - started}


def docs_section(results: list[dict]) -> str:
    """The figures as a docs/benchmarks.md section, named after the card."""
    env = next((r for r in results if r["stage"] == "env"), {})
    lines = [DOCS_MARK, f"## On a GPU: {env.get('card', '?')} (`bench/gpu_check.py`, {time.strftime('%Y-%m-%d')})", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, compute capability {env.get('capability')}, "
             f"native bf16: {env.get('native_bf16')}, dtype picked: {env.get('auto_dtype')}; faster-whisper: "
             f"{env.get('faster_whisper')}.", "", "| stage | ok | figures |", "|---|---|---|"]
    for r in results:
        shown = {k: v for k, v in r.items() if k not in ("stage", "ok", "rows", "trace")}
        lines.append(f"| {r['stage']} | {'yes' if r['ok'] else '**no**'} | `{json.dumps(shown)[:300]}` |")
    speed = next((r for r in results if r["stage"] == "speed" and r.get("rows")), None)
    if speed:
        lines += ["", f"{speed['model']} ({speed['dtype']}), copy bandwidth {speed['copy_bandwidth_gb_s']:.0f} GB/s:",
                  "", "| context | batch | first token (s) | decode tok/s | roofline tok/s | of roofline | peak GB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['context']} | {r['batch']} | {r['ttft_s']:.3f} | {r['decode_tok_s']:.0f} | "
                  f"{r['roofline_tok_s']:.0f} | {r['of_roofline']:.0%} | {r['peak_gb']:.1f} |" for r in speed["rows"]]
    graphs = next((r for r in results if r["stage"] == "graphs" and r.get("rows")), None)
    if graphs:
        lines += ["", "Decode steps from CUDA graphs against eager steps, side by side (`WEBBOT_CUDA_GRAPHS`):", "",
                  "| context | batch | eager tok/s | graphs tok/s | graphs / eager |", "|---|---|---|---|---|"]
        lines += [f"| {r['context']} | {r['batch']} | {r['eager_tok_s']:.0f} | {r['graphs_tok_s']:.0f} | "
                  f"{r['graphs_over_eager']:.2f}x |" for r in graphs["rows"]]
    return "\n".join(lines) + "\n" + DOCS_MARK + "\n"


def write_docs(results: list[dict], path: Path) -> None:
    """Put the figures' section into `path` (in place of the last run's, if it has one)."""
    text = path.read_text()
    section = docs_section(results)
    if DOCS_MARK in text:
        before, _, rest = text.partition(DOCS_MARK)
        _, _, after = rest.partition(DOCS_MARK + "\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the tiny model and small sizes (the dry run)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument("--docs", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--docs-file", type=Path, default=ROOT / "docs" / "benchmarks.md", help=argparse.SUPPRESS)
    args = parser.parse_args()

    results = []
    for name in args.stages:
        result = run_stage(name, args)
        results.append(result)
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(line + "\n")
    if args.docs:
        write_docs(results, args.docs_file)
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
