"""Documents: reading a 300-page PDF, and the wait for the first token of an answer about a document ten times the
context, against the same question with the answering passage pasted by hand.

  - extraction: harness.documents' 300-page PDF through `documents.extraction.extract` (the limited child
    process, as an upload does), median of --reps; its passages, and its tokens with SmolLM2's tokenizer;
  - time to first token, through a real server on SmolLM2-135M-Instruct (a 2,048-token context, greedy), the
    chat page's route: (a) a conversation with a ~100-page PDF attached (about 10x the context), asked the
    planted question, passages ranked and put in; (b) a fresh conversation where the question comes with the
    planted page's text pasted in. Alternated, --reps each, so both see the same machine.

    .venv/bin/python -m bench.bench_documents          # about 2 minutes on 2 cores

Prints a table and writes bench/results/documents-cpu.json.
"""

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import save_report
from harness import assets
from harness import documents as docs
from harness.server_process import PageSession, Server, read_sse


def first_token(session: PageSession, url: str, cid: str, content: str, documents: list[str]) -> tuple[float, str]:
    """Seconds from sending to the first token event, and the reply's text."""
    started = time.perf_counter()
    answer = session.post(f"{url}/api/conversations/{cid}/messages", stream=True, timeout=300,
                          json={"content": content, "documents": documents, "max_tokens": 24, "temperature": 0})
    answer.raise_for_status()
    first, text = None, ""
    for event, data in read_sse(answer.iter_lines()):
        if event == "token" and first is None:
            first = time.perf_counter() - started
        if event == "done":
            text = data["message"]["content"]
    return first, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from webbot.documents.extraction import extract

    big = docs.pdf(300, planted_page=200)
    times = []
    for _ in range(args.reps):
        started = time.perf_counter()
        document = extract(big, "big.pdf", max_pages=1000)
        times.append(time.perf_counter() - started)
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    tokens = len(tokenizer(document.text)["input_ids"])
    extraction = {"pages": document.pages, "bytes": len(big), "passages": len(document.passages), "tokens": tokens,
                  "seconds_median": round(statistics.median(times), 3), "seconds_all": [round(t, 3) for t in times]}
    print(f"extraction: {document.pages} pages, {len(big) / 1e6:.2f} MB, {len(document.passages)} passages, "
          f"{tokens} tokens, median {extraction['seconds_median']:.2f} s")

    pdf = docs.pdf(100, planted_page=70)
    planted_page = next(p["text"] for p in extract(pdf, "report.pdf").passages if docs.ANSWER in p["text"])
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(assets.smollm2_dir(), Path(tmp) / "data", Path(tmp) / "server.log", WEBBOT_MAX_TOKENS="2048",
                        WEBBOT_TEMPERATURE="0", WEBBOT_RATE_MESSAGES="off", WEBBOT_RATE_DOCUMENTS="off").start()
        try:
            session = PageSession()
            attached, pasted, answers = [], [], {"attached": [], "pasted": []}
            for _ in range(args.reps):
                cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
                made = session.post(f"{server.url}/api/conversations/{cid}/documents",
                                    files={"file": ("report.pdf", io.BytesIO(pdf), "application/pdf")}).json()
                seconds, text = first_token(session, server.url, cid, docs.QUESTION, [made["id"]])
                attached.append(seconds)
                answers["attached"].append(docs.ANSWER in text)
                doc_tokens = made["tokens"]
                cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
                seconds, text = first_token(session, server.url, cid,
                                            f'From report.pdf p. 70:\n"{planted_page}"\n\n{docs.QUESTION}', [])
                pasted.append(seconds)
                answers["pasted"].append(docs.ANSWER in text)
        finally:
            server.stop()
    ttft = {"document_tokens": doc_tokens, "context": 2048, "times_context": round(doc_tokens / 2048, 1),
            "attached_median_s": round(statistics.median(attached), 3),
            "pasted_median_s": round(statistics.median(pasted), 3),
            "ratio": round(statistics.median(attached) / statistics.median(pasted), 2),
            "attached_all": [round(t, 3) for t in attached], "pasted_all": [round(t, 3) for t in pasted],
            "answered": {k: f"{sum(v)}/{len(v)}" for k, v in answers.items()}}
    print(f"time to first token, a {doc_tokens}-token PDF ({ttft['times_context']}x the context) attached: "
          f"median {ttft['attached_median_s']:.2f} s; the passage pasted by hand: {ttft['pasted_median_s']:.2f} s; "
          f"ratio {ttft['ratio']}x; planted answer: attached {ttft['answered']['attached']}, "
          f"pasted {ttft['answered']['pasted']}")
    save_report("documents-cpu", {"model": "SmolLM2-135M-Instruct", "extraction": extraction, "ttft": ttft})


if __name__ == "__main__":
    main()
