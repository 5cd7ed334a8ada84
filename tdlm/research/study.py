"""The data-constrained study: AR vs masked diffusion, each at its best model size and schedule, for a fixed number of
unique training tokens that is repeated for many epochs.

- Data: the training documents of a prepared folder (`data.prepared`, with document boundaries) shuffled with a
  seed; a budget of U unique tokens is the first U // L blocks of those documents written back to back, so budgets
  are nested random samples of the corpus, not a few neighbouring files. The held-out split is cut into blocks in
  document order; every eighth block (so every sizeable document contributes) selects checkpoints and sizes, the
  other seven eighths report. The reported loss is therefore not the minimum it was chosen by.
- Scoring: all L tokens of every block, for every objective. AR sees a context token (BOS, else EOS) before each
  block, in training and in scoring; diffusion pays the NELBO of all L tokens (stratified t, seeded per block, so
  two checkpoints are compared on the same draws).
- Schedule: warmup-stable-decay. An arm trains at constant learning rate; at epochs 2, 3, 4, 6, 8, 12, ... and its
  last it branches a cool-down of `cooldown` x epochs with the rate decaying linearly to 0, scores it and resumes the
  stable run. Each branch stands for a run whose decay ends there (Hägele et al. 2024), so an arm's best branch is its
  best over schedule lengths: the same rule for both objectives. An arm stops once `patience` branches in a row were
  worse than its best by more than 2 standard errors (paired, clustered by document).
- Arms: objective x model size x seed (x dropout). Each arm's folder holds state.pt, rewritten at every branch
  (an interrupted arm continues from its last branch, bit for bit), its best model, and result.json once finished;
  finished arms are never recomputed. study.json gathers every finished arm and is rewritten after each one.
"""

import copy
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import TokenShards, document_blocks
from ..data.build import prepared_folder
from ..evaluation.likelihood import diffusion_nelbo_samples, prefix_token_id, with_context
from ..evaluation.runner import environment_info
from ..objectives import objective_for
from ..schedules import get_noise_schedule
from ..training import build_model, build_tokenizer
from .benchmark import device_name
from .statistics import paired_difference
from .study_report import tokens_label, write_report

OBJECTIVES = ("ar", "diffusion")  # the default arms; block diffusion is "bd<B>" (e.g. bd16: blocks of 16 tokens)
SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9}
Z = 2.0  # "better" means better by more than Z standard errors
SELECTION_STRIDE = 8  # every eighth held-out block selects checkpoints; the rest report


# ---- the grid ----------------------------------------------------------------------------------
def parse_budgets(text: str, available_tokens: int) -> list[int]:
    """"25k,100k,0.4M" (k/M/B suffixes or plain integers) -> unique-token budgets, each at most `available_tokens`."""
    budgets = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"([0-9.]+)\s*([kKmMbB]?)", part)
        if not match:
            raise ValueError(f"--unique-tokens: {part!r} is not a token count (25k, 0.4M, 100000)")
        tokens = round(float(match[1]) * SUFFIXES.get(match[2].lower(), 1))
        if not 0 < tokens <= available_tokens:
            raise ValueError(f"--unique-tokens: {part!r} = {tokens:,} tokens, but the training split has "
                             f"{available_tokens:,}")
        budgets.append(tokens)
    return budgets


def parse_sizes(text: str) -> list[str]:
    """"48x2,96x3" -> model sizes "HxN": hidden size H (a multiple of 16), N layers."""
    sizes = [s.strip() for s in text.split(",")]
    for size in sizes:
        match = re.fullmatch(r"(\d+)x(\d+)", size)
        if not match or int(match[1]) % 16 or int(match[1]) == 0 or int(match[2]) == 0:
            raise ValueError(f"--sizes: {size!r} is not HIDDENxLAYERS with HIDDEN a positive multiple of 16 "
                             f"(e.g. 48x2)")
    return sizes


def size_shape(size: str) -> dict:
    """Model shape of "HxN": heads of 16 dimensions, SwiGLU width 8H/3 rounded up to a multiple of 16."""
    hidden, layers = (int(v) for v in size.split("x"))
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 16,
            "intermediate_size": -(-8 * hidden // 3 // 16) * 16}


@dataclass(frozen=True)
class Arm:
    objective: str
    size: str
    budget: int  # unique tokens asked for (the arm trains on whole blocks of them)
    seed: int = 0
    dropout: float = 0.0

    @property
    def name(self) -> str:
        extra = f"_drop{self.dropout:g}" if self.dropout else ""
        return f"{self.objective}_{self.size}_{tokens_label(self.budget)}_seed{self.seed}{extra}"


def objective_mode(objective: str, block_size: int) -> dict:
    """"ar" / "diffusion" / "bd<B>" -> the model keys that select it."""
    if objective in ("ar", "diffusion"):
        return {"training_mode": "autoregressive" if objective == "ar" else "diffusion"}
    match = re.fullmatch(r"bd(\d+)", objective)
    if not match or not 0 < int(match[1]) <= block_size or block_size % int(match[1]):
        raise ValueError(f"--objectives: unknown objective {objective!r}; expected ar, diffusion or bd<B> with B a "
                         f"divisor of data.block_size={block_size} (e.g. bd16)")
    return {"training_mode": "block_diffusion", "bd_block_size": int(match[1])}


def arm_config(config: dict, arm: Arm, block_size: int) -> dict:
    """The experiment config of one arm: only objective, shape, dropout and seed differ between arms."""
    variant = copy.deepcopy(config)
    model = variant["model"]
    model.update(size_shape(arm.size), **objective_mode(arm.objective, block_size), hidden_dropout=arm.dropout,
                 attention_dropout=arm.dropout)
    model["max_position_embeddings"] = block_size + 1  # AR's context token; identical backbones (RoPE: no weights)
    variant["training"]["seed"] = arm.seed
    return variant


# ---- data --------------------------------------------------------------------------------------
class StudyData:
    """The budgets' training blocks (nested, from seeded shuffled documents) and the held-out blocks with the
    document each comes from, split into selection and report blocks."""

    def __init__(self, folder, block_size: int):
        self.folder, self.block_size = Path(folder), block_size
        self.train = TokenShards(folder, "train")
        evaluation = TokenShards(folder, "eval")
        num_documents = len(evaluation.document_offsets()) - 1
        blocks, documents = document_blocks(evaluation, np.arange(num_documents), block_size)
        selection = torch.zeros(len(blocks), dtype=torch.bool)
        selection[::SELECTION_STRIDE] = True
        self.selection = blocks[selection], documents[selection]
        self.report = blocks[~selection], documents[~selection]

    def document_order(self, seed: int) -> np.ndarray:
        num_documents = len(self.train.document_offsets()) - 1
        return np.random.default_rng(seed).permutation(num_documents)

    def budget_blocks(self, tokens: int, seed: int) -> torch.LongTensor:
        """The first tokens // L blocks of the training documents shuffled with `seed`."""
        return document_blocks(self.train, self.document_order(seed), self.block_size, tokens // self.block_size)[0]


# ---- scoring: all L tokens of every block --------------------------------------------------------
@torch.no_grad()
def block_losses(model, blocks: torch.LongTensor, context_id: int, num_samples: int, seed: int,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per block: loss per token over all L tokens (AR: exact NLL given the context token; the diffusion objectives:
    the NELBO averaged over `num_samples` stratified draws) and the Monte-Carlo variance of that mean (0 for AR)."""
    was_training = model.training
    model.eval()
    length = blocks.shape[1]
    objective = objective_for(model.config)
    if objective.corrupts:
        draws = diffusion_nelbo_samples(model, blocks, num_samples, seed, batch_size=batch_size,
                                        noise_block_size=objective.noise_block_size(model.config)) / length
        losses, variance = draws.mean(1).numpy(), (draws.var(1) / num_samples).numpy()
    else:
        rows = []
        for start in range(0, len(blocks), batch_size):
            batch = with_context(blocks[start:start + batch_size], context_id).to(model.device)
            out = model(input_ids=batch, labels=batch)
            rows.append(out.token_losses.double().cpu().view(len(batch), length).mean(1))
        losses = torch.cat(rows).numpy()
        variance = np.zeros_like(losses)
    model.train(was_training)
    return losses, variance


# ---- training one arm ----------------------------------------------------------------------------
def branch_epochs(max_epochs: int) -> list[int]:
    """2, 3, 4, 6, 8, 12, 16, ... (2^k and 1.5 * 2^k) below max_epochs, then max_epochs."""
    epochs, e = [], 2
    while e < max_epochs:
        epochs += [e] + ([e * 3 // 2] if e * 3 // 2 < max_epochs and e >= 2 else [])
        e *= 2
    return sorted(set(epochs)) + [max_epochs]


class ArmTrainer:
    """Trains one arm with warmup-stable-decay and cool-down branches (see the module docstring)."""

    def __init__(self, arm: Arm, config: dict, tokenizer, blocks, data: StudyData, settings: dict, folder: Path):
        self.arm, self.config, self.blocks, self.data, self.folder = arm, config, blocks, data, folder
        self.settings, self.context_id = settings, prefix_token_id(tokenizer)
        torch.manual_seed(arm.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_model(config, tokenizer).to(device)
        self.model.train()
        t = config["training"]
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                                            {"params": other, "weight_decay": 0.0}], lr=t["learning_rate"],
                                           betas=(t["adam_beta1"], t["adam_beta2"]))
        self.batch_size, self.peak_lr, self.warmup = t["batch_size"], t["learning_rate"], t["warmup_steps"]
        self.schedule = get_noise_schedule(self.model.config.noise_schedule)
        self.objective = objective_for(self.model.config)
        self.steps_per_epoch = math.ceil(len(blocks) / self.batch_size)
        # positions the backbone runs per block: AR's context token, block diffusion's x_t and x_0
        positions = {"autoregressive": blocks.shape[1] + 1, "block_diffusion": 2 * blocks.shape[1]}.get(
            self.objective.mode, blocks.shape[1])
        self.flops_per_block = 6 * self.model.num_parameters() * positions
        self.epoch, self.step, self.blocks_seen, self.points = 0, 0, 0, []
        self.best = None  # {"loss", "losses", "variance", "state", "point"}
        self._resume()

    # -- state
    def _resume(self) -> None:
        path = self.folder / "state.pt"
        if not path.is_file():
            return
        state = torch.load(path, weights_only=True, map_location=self.model.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.blocks_seen = int(state["epoch"]), int(state["step"]), int(state["blocks_seen"])
        self.points = json.loads(state["points"])
        self.best = {"loss": float(state["best_loss"]), "losses": state["best_losses"].numpy(),
                     "variance": state["best_variance"].numpy(), "state": state["best_model"],
                     "point": json.loads(state["best_point"])}

    def _save(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                 "step": self.step, "blocks_seen": self.blocks_seen, "points": json.dumps(self.points),
                 "best_loss": self.best["loss"], "best_losses": torch.from_numpy(self.best["losses"]),
                 "best_variance": torch.from_numpy(self.best["variance"]), "best_model": self.best["state"],
                 "best_point": json.dumps(self.best["point"])}
        staging = self.folder / "state.pt.tmp"
        torch.save(state, staging)
        os.replace(staging, self.folder / "state.pt")  # a crash mid-save leaves the previous state whole

    # -- one optimizer step
    def _batches(self, epoch: int, stream: str):
        """The epoch's blocks in a seeded order: the stable run and each cool-down draw their own orders."""
        generator = torch.Generator().manual_seed(hash_seed(self.arm.seed, stream, epoch))
        order = torch.randperm(len(self.blocks), generator=generator)
        for start in range(0, len(order), self.batch_size):
            yield self.blocks[order[start:start + self.batch_size]]

    def _train_step(self, batch: torch.LongTensor, lr: float, key: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(key)  # dropout
        generator = torch.Generator().manual_seed(key)  # corruption is drawn on the CPU: the same on any device
        device = self.model.device
        if self.objective.corrupts:
            c = self.model.config
            targets = self.objective.training_targets(batch, None, c, self.schedule, generator,
                                                      (c.min_mask_ratio, c.max_mask_ratio), c.antithetic_sampling)
            inputs = self.objective.model_inputs({"input_ids": batch}, targets)
            loss = self.model(**{k: v.to(device) for k, v in inputs.items() if v is not None},
                              num_items_in_batch=batch.numel()).loss
        else:
            inputs = with_context(batch, self.context_id).to(device)
            loss = self.model(input_ids=inputs, labels=inputs).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["training"]["max_grad_norm"])
        self.optimizer.step()
        loss = loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.arm.name}: non-finite training loss at step {self.step}")
        return loss

    def _stable_lr(self) -> float:
        return self.peak_lr * min(1.0, (self.step + 1) / max(1, self.warmup))

    # -- a cool-down branch
    def _branch(self) -> dict:
        """Cool down from the current state, score the selection blocks, restore the stable run."""
        saved_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_optimizer = copy.deepcopy(self.optimizer.state_dict())
        lr = self._stable_lr()
        steps = max(1, round(self.settings["cooldown"] * self.epoch * self.steps_per_epoch))
        done, epoch, blocks = 0, self.epoch, 0
        while done < steps:
            for batch in self._batches(epoch, "cooldown"):
                self._train_step(batch, lr * (1 - (done + 1) / steps), hash_seed(self.arm.seed, "cool", self.step,
                                                                                  done))
                done, blocks = done + 1, blocks + len(batch)
                if done == steps:
                    break
            epoch += 1
        selection_blocks, documents = self.data.selection
        losses, variance = block_losses(self.model, selection_blocks, self.context_id,
                                        self.settings["selection_samples"], self.settings["eval_seed"])
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(saved_model)
        self.optimizer.load_state_dict(saved_optimizer)
        loss = float(losses.mean())
        point = {"epoch": self.epoch, "step": self.step, "cooldown_steps": steps,
                 "train_flops": (self.blocks_seen + blocks) * self.flops_per_block, "eval_loss": loss,
                 "standard_error": float(math.sqrt(variance.sum()) / len(losses))}
        if self.best is not None:
            versus = paired_difference(losses, self.best["losses"], documents, variance, self.best["variance"])
            point["worse_than_best"] = versus["difference"] > Z * versus["standard_error"]
        if self.best is None or loss < self.best["loss"]:
            self.best = {"loss": loss, "losses": losses, "variance": variance, "state": state, "point": point}
        return point

    def _stop_early(self) -> bool:
        recent = self.points[-self.settings["patience"]:]
        return len(recent) == self.settings["patience"] and all(p.get("worse_than_best") for p in recent)

    # -- the run
    def train(self) -> None:
        max_epochs = self.settings["max_epochs"]
        branches = set(branch_epochs(max_epochs))
        start = time.perf_counter()
        progress = tqdm(total=max_epochs, initial=self.epoch, desc=self.arm.name, leave=False, mininterval=5)
        while self.epoch < max_epochs and not (self.points and self._stop_early()):
            for batch in self._batches(self.epoch, "stable"):
                self._train_step(batch, self._stable_lr(), hash_seed(self.arm.seed, "stable", self.step))
                self.step += 1
                self.blocks_seen += len(batch)
            self.epoch += 1
            progress.update(1)
            if self.epoch in branches:
                self.points.append(self._branch())
                progress.set_postfix(best=f"{min(p['eval_loss'] for p in self.points):.3f}",
                                     last=f"{self.points[-1]['eval_loss']:.3f}")
                self._save()
        progress.close()
        self.train_seconds = time.perf_counter() - start

    def finish(self) -> dict:
        """Score the best branch on the report blocks; save it as a model folder; the arm's result."""
        self.model.load_state_dict(self.best["state"])
        report_blocks, _ = self.data.report
        start = time.perf_counter()
        losses, variance = block_losses(self.model, report_blocks, self.context_id, self.settings["report_samples"],
                                        self.settings["eval_seed"] + 1)
        self.model.save_pretrained(self.folder / "best")
        return {**asdict(self.arm), "name": self.arm.name, "num_parameters": self.model.num_parameters(),
                "unique_tokens": int(self.blocks.numel()), "points": self.points, "best": self.best["point"],
                "stopped_at_epoch": self.epoch, "report_loss": float(losses.mean()),
                "report_standard_error_mc": float(math.sqrt(variance.sum()) / len(losses)),
                "report_losses": [round(float(v), 6) for v in losses],
                "report_variance": [float(v) for v in variance],
                "seconds": {"train": round(getattr(self, "train_seconds", 0.0), 1),
                            "report": round(time.perf_counter() - start, 1)}}


def hash_seed(seed: int, stream: str, *numbers: int) -> int:
    """A 63-bit seed from (seed, stream name, numbers): independent streams that survive a resume."""
    key = f"{seed}|{stream}|" + "|".join(map(str, numbers))
    value = 0
    for char in key.encode():
        value = (value * 1_000_003 + char) % (2 ** 63 - 1)
    return value


def run_arm(arm: Arm, config: dict, tokenizer, data: StudyData, settings: dict, output_dir: Path) -> dict:
    """Train (or resume) one arm and return its result; a finished arm's result.json is read, not recomputed."""
    folder = output_dir / "runs" / arm.name
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    blocks = data.budget_blocks(arm.budget, settings["data_seed"] + arm.seed)
    trainer = ArmTrainer(arm, arm_config(config, arm, data.block_size), tokenizer, blocks, data, settings, folder)
    trainer.train()
    result = trainer.finish()
    staging = folder / "result.json.tmp"
    staging.write_text(json.dumps(result))
    os.replace(staging, done)
    (folder / "state.pt").unlink()  # the best model folder and result.json are what a finished arm keeps
    return result


def finished_arms(output_dir: Path) -> list[dict]:
    """Every finished arm under output_dir/runs, whichever process ran it (arms may run in parallel processes)."""
    return [json.loads(path.read_text()) for path in sorted(Path(output_dir).glob("runs/*/result.json"))]


# ---- sample quality ------------------------------------------------------------------------------
def used_documents(data: StudyData, arms: list[dict], data_seed: int) -> set[int]:
    """Every training document some arm saw."""
    used = set()
    offsets = data.train.document_offsets()
    for arm in arms:
        order = data.document_order(data_seed + arm["seed"])
        lengths = offsets[order + 1] - offsets[order]
        used.update(order[:int(np.searchsorted(np.cumsum(lengths), arm["unique_tokens"])) + 1].tolist())
    return used


def sample_quality_stage(config: dict, tokenizer, data: StudyData, settings: dict, arms: list[dict],
                         output_dir: Path, num_samples: int, scorer_tokens: int, scorer_size: str, steps: int) -> dict:
    """Gen-PPL and unigram entropy of each objective's best size per budget (seed 0), scored by an AR model trained
    on documents no arm saw, beside the same scorer on the report blocks (real text: its gen-PPL and entropy)."""
    from .sample_quality import score_texts, unigram_entropy

    used = used_documents(data, arms, settings["data_seed"])
    order = [d for d in data.document_order(settings["data_seed"])[::-1] if d not in used]
    blocks = document_blocks(data.train, order, data.block_size, scorer_tokens // data.block_size)[0]
    scorer_arm = Arm("ar", scorer_size, scorer_tokens, seed=0)
    folder = output_dir / "scorer"
    if not (folder / "result.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        trainer = ArmTrainer(scorer_arm, arm_config(config, scorer_arm, data.block_size), tokenizer, blocks, data,
                             {**settings, "max_epochs": settings["scorer_epochs"]}, folder)
        trainer.train()
        result = trainer.finish()
        (folder / "result.json").write_text(json.dumps({k: v for k, v in result.items()
                                                        if k not in ("report_losses", "report_variance")}))
    from ..runs import load_model

    scorer = load_model(folder / "best").eval()
    reference = data.report[0][:num_samples]
    texts = tokenizer.batch_decode(reference, skip_special_tokens=True)
    rows = [{"name": "held-out text (report blocks)", **score_texts(scorer, tokenizer, texts)}]
    rows[0]["unigram_entropy_of_blocks"] = float(np.mean([unigram_entropy(b.tolist()) for b in reference]))
    from ..text_generation import generate_text

    for budget in sorted({a["budget"] for a in arms}):
        for objective in dict.fromkeys(a["objective"] for a in arms):
            best = best_arm(arms, objective, budget)
            if best is None or not (output_dir / "runs" / best["name"] / "best").is_dir():
                continue  # weights are not committed with results: a fresh clone has only result.json
            model = load_model(output_dir / "runs" / best["name"] / "best").eval()
            # block diffusion: `steps` per block at most, one token per step within a block of B
            options = {"num_steps": min(steps, model.config.bd_block_size or steps), "remasking": "random"} \
                if objective_for(model.config).corrupts else {}
            texts = generate_text(model, tokenizer, [""], max_new_tokens=data.block_size, num_samples=num_samples,
                                  seed=0, temperature=1.0, **options)
            rows.append({"name": best["name"], "unique_tokens": best["unique_tokens"],
                         "sampler": f"{steps} steps, random order, T=1" if options else "ancestral, T=1",
                         **score_texts(scorer, tokenizer, texts)})
    return {"scorer": f"AR {scorer_size} on {blocks.numel():,} tokens of documents no arm saw, "
                      f"{settings['scorer_epochs']} epochs", "rows": rows}


# ---- the study -----------------------------------------------------------------------------------
def best_arm(results: list[dict], objective: str, budget: int, seed: int = 0) -> dict | None:
    """The size with the lowest selection loss (the report blocks play no part in the choice)."""
    rows = [r for r in results if r["objective"] == objective and r["budget"] == budget and r["seed"] == seed
            and not r["dropout"]]
    return min(rows, key=lambda r: r["best"]["eval_loss"], default=None)


def environment(argv: list[str] | None) -> dict:
    """What study.json records about where it ran: commit, command line, machine and versions."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    info = environment_info()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "tdlm")),
            "command": " ".join(argv if argv is not None else sys.argv), "machine": platform.platform(),
            "processor": device_name(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": info["python"], "torch": info["packages"]["torch"],
            "transformers": info["packages"]["transformers"], "packages": info["packages"]}


def run_study(config: dict, budgets: str, sizes: str, output_dir, objectives=OBJECTIVES, max_epochs: int = 300,
              cooldown: float = 0.15, patience: int = 2, selection_samples: int = 4, report_samples: int = 8,
              extra_seeds: int = 1, dropout: float = 0.1, data_seed: int = 0, extra_at: str | None = None,
              gen_samples: int = 0, gen_steps: int = 128, scorer_tokens: int = 500_000, scorer_size: str = "64x3",
              train: bool = True, argv: list[str] | None = None) -> dict:
    """Every (budget, size, objective) arm, then `extra_seeds` more seeds of each objective's best size at budget
    `extra_at` (default: the first), then a dropout arm of each objective's best size there; study.json after every
    arm. `gen_samples` > 0 adds the sample-quality stage (`sample_quality_stage`); `train=False` runs only that stage,
    on the arms that have finished."""
    two = ">= 2 (a Monte-Carlo SE needs two)"
    checks = {"--max-epochs": (max_epochs, max_epochs >= 2, ">= 2"),
              "--cooldown": (cooldown, 0 < cooldown <= 1, "in (0, 1]"),
              "--patience": (patience, patience >= 1, ">= 1"),
              "--selection-samples": (selection_samples, selection_samples >= 2, two),
              "--report-samples": (report_samples, report_samples >= 2, two),
              "--extra-seeds": (extra_seeds, extra_seeds >= 0, ">= 0"),
              "--dropout": (dropout, 0 <= dropout < 1, "in [0, 1)"),
              "--gen-samples": (gen_samples, gen_samples >= 0, ">= 0"),
              "--gen-steps": (gen_steps, gen_steps >= 1, ">= 1")}
    for flag, (value, ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"{flag}: {value} is not allowed; it must be {allowed}")
    for objective in objectives:
        objective_mode(objective, config["data"]["block_size"])  # names the bad one before any training
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config)
    block_size = config["data"]["block_size"]
    data = StudyData(prepared_folder(config["data"], tokenizer), block_size)
    token_budgets, size_list = parse_budgets(budgets, data.train.num_tokens), parse_sizes(sizes)
    extra = parse_budgets(extra_at, data.train.num_tokens)[0] if extra_at else token_budgets[0]
    if extra not in token_budgets:  # checked before any training, not after it
        raise ValueError(f"--extra-at: {extra_at} is not one of --unique-tokens {budgets}")
    if gen_samples and not data.block_size <= scorer_tokens <= data.train.num_tokens:
        raise ValueError(f"--scorer-tokens: {scorer_tokens} must lie between one block ({data.block_size}) and the "
                         f"training split's {data.train.num_tokens:,} tokens")
    t = config["training"]
    settings = {"max_epochs": max_epochs, "cooldown": cooldown, "patience": patience,
                "selection_samples": selection_samples, "report_samples": report_samples, "eval_seed": 1234,
                "data_seed": data_seed, "block_size": block_size, "batch_size": t["batch_size"],
                "learning_rate": t["learning_rate"], "weight_decay": t["weight_decay"],
                "warmup_steps": t["warmup_steps"], "vocab_size": len(tokenizer),
                "selection_blocks": len(data.selection[0]), "report_blocks": len(data.report[0]),
                "report_documents": int(torch.unique(data.report[1]).numel()),
                "noise_schedule": config["diffusion"]["noise_schedule"], "prepared": str(data.folder),
                "report_block_documents": data.report[1].tolist(), "scorer_epochs": 4}
    results = []

    def run(arm: Arm) -> None:
        if not train or any(r["name"] == arm.name for r in results):
            return
        print(f"[study] {arm.name}", flush=True)
        results.append(run_arm(arm, config, tokenizer, data, settings, output_dir))
        write_report(output_dir, {"settings": settings, "environment": environment(argv),
                                  "arms": finished_arms(output_dir)})

    for budget in token_budgets:
        for size in size_list:
            for objective in objectives:
                run(Arm(objective, size, budget))
    for objective in objectives if train else ():
        best = best_arm(results, objective, extra)
        for seed in range(1, extra_seeds + 1):
            run(Arm(objective, best["size"], extra, seed=seed))
        if dropout:
            run(Arm(objective, best["size"], extra, dropout=dropout))
    study = {"settings": settings, "environment": environment(argv), "arms": finished_arms(output_dir)}
    if gen_samples:
        print("[study] sample quality", flush=True)
        study["sample_quality"] = sample_quality_stage(config, tokenizer, data, settings, study["arms"], output_dir,
                                                       gen_samples, scorer_tokens, scorer_size, gen_steps)
    return write_report(output_dir, study)
