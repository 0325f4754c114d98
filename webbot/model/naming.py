"""What the page calls the model: a name a person recognises, made from the model's id without reading it.

`WEBBOT_MODEL` may be a hub id, a folder, a folder inside the hub's cache (named by a commit hash) or a `.gguf`
file; the API keeps its own id for clients (`Bot.name`), and `WEBBOT_MODEL_NAME` overrides what is made here.
"""

import re
from pathlib import PurePath

HUB_CACHE_PREFIX = "models--"  # the hub cache's folder for org/name is models--org--name/snapshots/<commit>
# A GGUF file's name ends with its quantisation ("...-Q4_K_M.gguf", "....Q4_1.gguf", "...-bf16.gguf")
QUANT_SUFFIX = re.compile(r"[.\-_](?P<quant>(?:I?Q\d[\w]*)|(?:B?F(?:16|32))|(?:f16|bf16|f32))$", re.IGNORECASE)


def display_name(model_id: str) -> str:
    """"unsloth/Llama-3.2-1B-Instruct" -> "Llama 3.2 1B Instruct"; ".../SmolLM2-135M-Instruct.Q4_1.gguf" ->
    "SmolLM2 135M Instruct (Q4_1)"; a hub-cache snapshot folder -> its repository's name."""
    path = PurePath(model_id.rstrip("/\\") or model_id)
    quant = ""
    if path.suffix.lower() == ".gguf":
        base = path.stem
        found = QUANT_SUFFIX.search(base)
        if found:
            base, quant = base[:found.start()], found["quant"]
    elif path.parent.name == "snapshots" and path.parent.parent.name.startswith(HUB_CACHE_PREFIX):
        base = path.parent.parent.name.split("--")[-1]
    else:
        base = path.name  # a hub id's name after its organisation, or a folder's name
    words = " ".join(base.replace("_", " ").replace("-", " ").split()) or model_id
    return f"{words} ({quant})" if quant else words
