"""Loads a `vlmtrack export` folder with transformers alone and scores caption items on it, as a Stage-2 user
would: `python -I idefics2_standalone.py EXPORT_DIR ITEMS_JSON OUT_JSON MAX_NEW_TOKENS`.

Run with -I from outside the repo, and with an import blocker on vlmtrack and tests, so that any hidden
dependence of the export on vlmtrack's code fails here. Per item: the summed loss of the caption tokens
and the end-of-turn token (what vlmtrack supervises), their count, and the greedy caption."""
import importlib.abc
import json
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vlmtrack", "tests"):
            raise ImportError(f"{name} imported by the export check: the export must load without vlmtrack")
        return None


sys.meta_path.insert(0, Blocker())

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Idefics2ForConditionalGeneration  # noqa: E402


def content(human: str) -> list[dict]:
    """LLaVA's `<image>\\nText` / `Text\\n<image>` as Idefics2's content list."""
    before, after = human.split("<image>")
    items = [{"type": "text", "text": before.removesuffix("\n")}] if before else []
    items.append({"type": "image"})
    return items + ([{"type": "text", "text": after.removeprefix("\n")}] if after else [])


def main(export_dir: str, items_path: str, out_path: str, max_new_tokens: int) -> None:
    model = Idefics2ForConditionalGeneration.from_pretrained(export_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(export_dir)
    eot = model.generation_config.eos_token_id
    out = []
    for item in json.loads(open(items_path).read()):
        text = processor.apply_chat_template([{"role": "user", "content": content(item["human"])}],
                                             add_generation_prompt=True)
        image = Image.open(item["image_path"]).convert("RGB")
        inputs = processor(text=text, images=[image], return_tensors="pt")
        prompt = inputs["input_ids"]
        target = processor.tokenizer(item["caption"], add_special_tokens=False)["input_ids"] + [eot]
        ids = torch.cat([prompt, torch.tensor([target])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                           pixel_attention_mask=inputs["pixel_attention_mask"]).logits
            n = len(target)
            loss = torch.nn.functional.cross_entropy(logits[0, -n - 1:-1].float(), ids[0, -n:], reduction="sum")
            new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[0, prompt.shape[1]:]
        tokens = new.tolist()
        cut = tokens.index(eot) if eot in tokens else len(tokens)
        out.append({"id": item["id"], "prompt_ids": prompt[0].tolist(), "loss_sum": float(loss), "tokens": n,
                    "pred_tokens": tokens[:cut],
                    "pred_text": processor.tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()})
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
