"""Stock ecosystem entry points on a published folder, in a process without tdlm: the AR model in
transformers.pipeline("text-generation"), the diffusion model through AutoModel/AutoModelForMaskedLM +
diffusion_generate, and the model card's copy-paste snippets run as written."""

import json
import re

import pytest
import torch
from publish_helpers import run_without_tdlm, save_checkpoint

from tdlm import TDLMForCausalLM, hub


def test_ar_checkpoint_works_in_the_text_generation_pipeline(tmp_path):
    folder = hub.prepare_hub_folder(save_checkpoint(tmp_path / "ckpt", "autoregressive"), tmp_path / "published")
    prompt = "The history of the city"
    model = TDLMForCausalLM.from_pretrained(folder).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = model.generate(prompt_ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)

    out = run_without_tdlm(f"""
        import json
        from transformers import pipeline
        generator = pipeline("text-generation", model={str(folder)!r}, trust_remote_code=True)
        assert type(generator.model).__name__ == "TDLMForCausalLM"
        kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
        text = generator({prompt!r}, **kwargs)[0]["generated_text"]
        new_text = generator({prompt!r}, return_full_text=False, **kwargs)[0]["generated_text"]
        ids = generator({prompt!r}, return_tensors=True, **kwargs)[0]["generated_token_ids"]
        print(json.dumps({{"text": text, "new_text": new_text, "ids": list(ids)}}))
        """, cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["ids"]) == prompt_ids.shape[1] + 10  # prompt + exactly the requested new tokens
    assert result["ids"] == expected[0].tolist()
    assert result["text"] == tokenizer.decode(expected[0])
    assert result["text"] == prompt + result["new_text"]
    assert result["new_text"] == tokenizer.decode(expected[0, prompt_ids.shape[1]:])


def test_diffusion_checkpoint_infills_with_only_the_folder(tmp_path):
    folder = hub.prepare_hub_folder(save_checkpoint(tmp_path / "ckpt", "diffusion"), tmp_path / "published")
    out = run_without_tdlm(f"""
        import json, torch
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
        folder = {str(folder)!r}
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        auto = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        masked_lm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        left = tokenizer("The history of").input_ids
        right = tokenizer(" is long.").input_ids
        ids = torch.tensor([left + [tokenizer.mask_token_id] * 6 + right])
        a = auto.diffusion_generate(input_ids=ids, num_steps=3)
        b = masked_lm.diffusion_generate(input_ids=ids, num_steps=3)
        with torch.no_grad():
            same = torch.equal(auto(input_ids=ids).logits, masked_lm(input_ids=ids).logits)
        print(json.dumps({{"a": a.tolist(), "b": b.tolist(), "input": ids.tolist(), "mask": tokenizer.mask_token_id,
                           "same_logits": same, "class": type(auto).__name__}}))
        """, cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["class"] == "TDLMForMaskedDiffusion" and result["same_logits"]
    given, sample = result["input"][0], result["a"][0]
    assert result["a"] == result["b"]
    assert len(sample) == len(given)
    assert all(s == g for s, g in zip(sample, given) if g != result["mask"])  # context kept
    assert result["mask"] not in sample  # every mask filled


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_model_card_snippet_runs_as_written(tmp_path, mode):
    """The card's usage block, with the repo id pointing at the published folder, runs without tdlm."""
    published = tmp_path / "published"
    hub.prepare_hub_folder(save_checkpoint(tmp_path / "ckpt", mode), published, repo_id=str(published))
    card = (published / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    assert str(published) in snippet
    torch.manual_seed(0)
    out = run_without_tdlm(snippet, cwd=tmp_path)
    printed = [line for line in out.splitlines() if line.strip()]
    assert len(printed) >= 2 and all(line for line in printed)  # each print of the snippet produced text
