"""Batching packed (or ragged) token blocks for DiffusionTrainer."""

import torch


class DataCollatorForTDLM:
    """Stack (or right-pad) examples into input_ids, labels (= input ids at real tokens, -100 at padding)
    and, only when some row is padded, attention_mask (without padding the model takes sdpa's fused
    path). The trainer corrupts inputs itself; `labels` lets Trainer count the real tokens of an
    accumulated batch (`num_items_in_batch`). `context_token_id` (AR with `ar_context_token`) goes in front of
    every example, so that all L tokens of a block are predicted, as they are scored."""

    def __init__(self, pad_token_id: int, context_token_id: int | None = None):
        self.pad_token_id = pad_token_id
        self.context_token_id = context_token_id

    def __call__(self, examples):
        rows = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        if self.context_token_id is not None:
            rows = [torch.cat([row.new_tensor([self.context_token_id]), row]) for row in rows]
        length = max(r.numel() for r in rows)
        if all(row.numel() == length for row in rows):  # packed blocks: one stack, no per-row padding loop
            input_ids = torch.stack(rows)
            return {"input_ids": input_ids, "labels": input_ids.clone()}
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : row.numel()] = row
            attention_mask[i, : row.numel()] = 1
        return {"input_ids": input_ids, "labels": input_ids.masked_fill(attention_mask == 0, -100),
                "attention_mask": attention_mask}
