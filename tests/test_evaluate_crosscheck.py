"""HF `evaluate` as an independent check of our multiple-choice metrics (the README says why the scorer does not
use it): a local metric module, loaded offline by path and fed with add_batch, gives the same acc / acc_norm as
`score_docs` on the per-document log-likelihoods."""

import evaluate
import torch

from tdlm import TDLMConfig, load_tokenizer, model_class_for
from tdlm.evaluation.multiple_choice import score_docs
from tdlm.evaluation.tasks import DEFAULT_DATA_DIR, Doc
from tdlm.tokenization import config_kwargs_for_tokenizer

ACCURACY_MODULE = '''
import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="fraction of predictions equal to their reference", citation="",
                                   inputs_description="predictions, references: class indices",
                                   features=datasets.Features({"predictions": datasets.Value("int32"),
                                                               "references": datasets.Value("int32")}))

    def _compute(self, predictions, references):
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
'''

DOCS = [Doc("The cat sat on the", ["mat", "sky", "idea"], 0), Doc("Water is", ["wet", "dry"], 0),
        Doc("One, two,", ["three", "seven", "blue"], 0), Doc("The sun rises in the", ["east", "west"], 1),
        Doc("Birds can", ["fly", "swim underwater for days"], 0)]


def test_local_evaluate_module_agrees_with_our_accuracies(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "accuracy.py").write_text(ACCURACY_MODULE)
    accuracy = evaluate.load(str(tmp_path / "accuracy.py"))  # a local path: no Hub access
    tokenizer = load_tokenizer(str(DEFAULT_DATA_DIR / "gpt2-tokenizer"))
    torch.manual_seed(0)
    config = TDLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, training_mode="autoregressive",
                        **config_kwargs_for_tokenizer(tokenizer))
    model = model_class_for(config)(config).eval()
    ours = score_docs(model, tokenizer, DOCS)
    for metric, normalise in (("acc", False), ("acc_norm", True)):
        chosen = predictions(DOCS, ours["loglikelihoods"], normalise)
        for half in (slice(0, 2), slice(2, None)):  # add_batch accumulates across calls
            accuracy.add_batch(predictions=chosen[half], references=[doc.gold for doc in DOCS[half]])
        assert accuracy.compute()["accuracy"] == ours[metric]


def predictions(docs, loglikelihoods, normalise):
    """Each document's argmax choice (first on ties), by log-likelihood or per character of the choice."""
    def score(doc, lls, i):
        return lls[i] / len(doc.choices[i]) if normalise else lls[i]

    return [max(range(len(doc.choices)), key=lambda i: (score(doc, lls, i), -i))
            for doc, lls in zip(docs, loglikelihoods)]
