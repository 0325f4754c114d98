"""Whisper through transformers (WEBBOT_SPEECH_BACKEND=transformers): fp16 on CUDA, fp32 on CPU; a long clip
goes in as a batch of chunks cut at pauses. Imported only when this backend loads, since it imports torch.
"""

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from webbot.voice.uploads import SAMPLE_RATE
from webbot.voice.whisper import BEAMS, Segment

# Chunks of a long clip decoded together. On 2 CPU cores a 120 s clip took 16.1 s one chunk
# at a time, 13.9 s two at a time, 23.9 s eight at a time.
BATCH_CPU, BATCH_CUDA = 2, 8


class TransformersBackend:
    """Whisper through transformers; a long clip goes in as a batch of chunks cut at pauses."""

    def __init__(self, model: str, device: str):
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch = BATCH_CUDA if device.startswith("cuda") else BATCH_CPU
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(model, dtype=self.dtype).to(device).eval()
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.special_ids = set(self.processor.tokenizer.all_special_ids)

    def transcribe(self, samples: np.ndarray, spans: list[tuple[int, int]], language: str | None):
        segments, detected = [], None
        options = {"language": language, "task": "transcribe"} if self.multilingual and language else {}
        for first in range(0, len(spans), self.batch):
            batch = spans[first:first + self.batch]
            features = self.processor([samples[s:e] for s, e in batch], sampling_rate=SAMPLE_RATE,
                                      return_tensors="pt", return_attention_mask=True)
            with torch.inference_mode():
                out = self.model.generate(features.input_features.to(self.device, self.dtype),
                                          attention_mask=features.attention_mask.to(self.device), num_beams=BEAMS,
                                          **options)
            for (start, end), ids in zip(batch, out.tolist(), strict=True):
                detected = detected or self._language_of(ids)
                text = self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
                segments.append(Segment(len(segments), start / SAMPLE_RATE, end / SAMPLE_RATE, text,
                                        [t for t in ids if t not in self.special_ids]))
        return segments, language or detected or "en"

    def _language_of(self, ids: list[int]) -> str | None:
        """The language token the model chose (multilingual models), as a code."""
        if not self.multilingual:
            return "en"
        for token in self.processor.tokenizer.convert_ids_to_tokens(ids[:4]):
            if token and token.startswith("<|") and token.endswith("|>") and 2 <= len(token) - 4 <= 3:
                return token[2:-2]
        return None
