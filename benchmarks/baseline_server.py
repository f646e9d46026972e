"""Baseline B of issue 8: a model server in the style of the 2023 sample submissions.

One request at a time (a single-threaded HTTP server), Hugging Face `generate` per request, no
batching. It speaks the same HTTP API as the engine's server so HELM's HTTP client drives both.

    python -m benchmarks.baseline_server --model DIR --port 8080
"""

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def make_handler(model, tokenizer, device):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: HELM sends thousands of requests
            pass

        def _answer(self, payload: dict, status: int = 200):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer({"status": "ok"})

        def do_POST(self):
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            start = time.perf_counter()
            if self.path == "/tokenize":
                ids = tokenizer(data["text"], add_special_tokens=False).input_ids
                if data.get("truncation") and data.get("max_length"):
                    ids = ids[: data["max_length"]]
                return self._answer({"tokens": ids, "request_time": time.perf_counter() - start})
            if self.path == "/decode":
                text = tokenizer.decode(data["tokens"])
                return self._answer({"text": text, "request_time": time.perf_counter() - start})
            self._answer(self._process(data, start))

        @torch.inference_mode()
        def _process(self, data: dict, start: float) -> dict:
            enc = tokenizer(data["prompt"], return_tensors="pt", return_token_type_ids=False).to(device)
            greedy = data.get("temperature", 1.0) < 1e-5
            max_new = int(data.get("max_new_tokens", 1))
            prompt_len = enc.input_ids.shape[1]
            if max_new > 0:
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new,
                    do_sample=not greedy,
                    temperature=None if greedy else data["temperature"],
                    top_p=data.get("top_p", 1.0) if not greedy else None,
                    return_dict_in_generate=True,
                    output_scores=True,
                    pad_token_id=tokenizer.eos_token_id,
                )
                new_ids = out.sequences[0, prompt_len:].tolist()
                logprobs = [
                    torch.log_softmax(score[0].float(), -1)[tok].item()
                    for score, tok in zip(out.scores, new_ids, strict=True)
                ]
            else:
                new_ids, logprobs = [], []
            tokens = [{"text": tokenizer.decode([t]), "logprob": lp} for t, lp in zip(new_ids, logprobs, strict=True)]
            text = tokenizer.decode(new_ids)
            if data.get("echo_prompt"):
                logits = model(**enc).logits[0].float().log_softmax(-1)
                ids = enc.input_ids[0].tolist()
                echo = [{"text": tokenizer.decode([ids[0]]), "logprob": 0.0}]
                echo += [{"text": tokenizer.decode([t]), "logprob": logits[i, t].item()} for i, t in enumerate(ids[1:])]
                tokens = echo + tokens
                text = data["prompt"] + text
            for stop in data.get("stop_sequences") or []:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            return {
                "text": text,
                "tokens": tokens,
                "logprob": sum(t["logprob"] for t in tokens),
                "request_time": time.perf_counter() - start,
            }

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=getattr(torch, args.dtype), local_files_only=True
    ).to(device)
    model.eval()
    HTTPServer(("127.0.0.1", args.port), make_handler(model, tokenizer, device)).serve_forever()


if __name__ == "__main__":
    main()
