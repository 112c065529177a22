"""DP-SGD for one federated round with Opacus, recording exactly what ran into the site accountant.

Usage by the shell's training loop (``fedrema_cli/training.py``)::

    with private_training(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(),
                          data=train_set, plan=plan, accountant=acc,
                          sampling_generator=g_sample, noise_generator=g_noise) as dp:
        for _ in range(plan.local_epochs):
            for x, y in dp.data_loader:          # Poisson batches (size varies, may be empty)
                dp.optimizer.zero_grad()
                dp.criterion(dp.model(x), y).backward()
                dp.optimizer.step()
    record = dp.record                           # what Opacus counted; now also in ``acc``
    plain = dp.standard_module()                 # the trained nn.Module, no Opacus hooks

Why it is shaped like this:

- Opacus counts steps through an optimizer hook (``IAccountant.get_optimizer_hook_fn``); the
  training code never calls the accountant. A fresh Opacus accountant per round therefore holds
  exactly this round's steps, and on exit we append that history to the persisted
  ``SiteAccountant`` (merging like Opacus). The persisted history is what Opacus counted.
- Independently, a torch step hook on the *wrapped* optimizer counts parameter updates. Opacus
  lets ``DPOptimizer.step`` update parameters without noise or accounting when no per-sample
  gradients exist (e.g. ``step()`` without a forward/backward, ``pre_step`` returns ``True``);
  if updates != accounted steps we fail closed with ``AccountingError``.
- The number of updates is capped at the plan's steps, so a loop cannot run past what the
  pre-round gate approved.
- Before anything runs, the setup is validated and refused if it breaks the accounting's
  assumptions: BatchNorm (per-sample outputs depend on batch peers; Opacus
  ``validators/batch_norm.py``), ``WeightedRandomSampler`` (Opacus ignores the weights and
  mis-computes q, opacus#813), any non-default sampler or batch sampler, ``drop_last``,
  iterable datasets, a model that is already private (opacus#608), the ``ew`` and
  ``functorch`` modes (they crash on the empty batches Poisson sampling produces), and
  ``secure_mode``.
- ``secure_mode`` needs ``torchcsprng``, whose last release (0.2.1, 2021) does not build
  against current torch (meta-pytorch/csprng#130, opacus#504). We refuse it rather than
  pretend: noise and sampling use seeded ``torch.Generator``s (Mersenne Twister / Philox), which
  is fine against an honest-but-curious coordinator but not against floating-point attacks
  (Mironov 2012; arXiv 2107.10138, 2112.05307).

>>> import torch
>>> plain = to_standard_module(torch.nn.Linear(2, 1))
>>> sorted(plain.state_dict())
['bias', 'weight']
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.analysis import Triple
from privacy.errors import AccountingError, UnsupportedTrainingSetup
from privacy.policy import GradSampleMode, RoundPlan

SUPPORTED_GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ghost")
_MODE_REFUSALS = {
    "ew": "ExpandedWeights crashes on the empty batches Poisson sampling produces",
    "functorch": "functorch crashes on empty Poisson batches through GroupNorm and is ~2x "
    "slower than hooks (benchmarks/dp.py)",
}
WRAPPER_PREFIX = "_module."


@dataclass(frozen=True)
class RoundRecord:
    """What one round of DP-SGD actually ran, as counted by Opacus's accountant."""

    history: tuple[Triple, ...]
    steps: int
    parameter_updates: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    mechanism: str
    grad_sample_mode: str
    poisson_rate: float
    expected_batch_size: int

    def triple(self) -> Triple:
        """Return the round as one ``(sigma, q, steps)`` triple (what a ledger entry stores).

        Raises ``AccountingError`` if the round mixed noise levels or sample rates, which the
        engine never does, or ran no steps.
        """
        if len(self.history) != 1:
            raise AccountingError(
                f"this round recorded {len(self.history)} (sigma, q) segments; expected one"
            )
        return self.history[0]


def _model_problems(model: nn.Module) -> list[str]:
    from opacus.grad_sample import AbstractGradSampleModule
    from opacus.validators import ModuleValidator

    problems: list[str] = []
    if isinstance(model, AbstractGradSampleModule) or hasattr(model, "autograd_grad_sample_hooks"):
        problems.append(
            "the model is already wrapped by Opacus; pass the plain nn.Module "
            "(privatizing twice double-counts hooks, opacus#608)"
        )
        return problems
    for err in ModuleValidator.validate(model, strict=False):
        text = str(err).strip()
        if "BatchNorm" in text:
            text += (
                " BatchNorm mixes records within a batch, so a per-record gradient bound does "
                "not hold; use GroupNorm or LayerNorm (opacus ModuleValidator.fix)."
            )
        problems.append(text)
    return problems


def _data_problems(data: Dataset[Any] | DataLoader[Any], *, batch_size: int) -> list[str]:
    from opacus.data_loader import DPDataLoader

    problems: list[str] = []
    if batch_size < 1:
        problems.append(f"batch size must be positive, got {batch_size}")
    dataset: Any = data
    if isinstance(data, DataLoader):
        dataset = data.dataset
        sampler = data.sampler
        if isinstance(data, DPDataLoader):
            problems.append(
                "the loader is already an Opacus DPDataLoader; pass the dataset and let the "
                "engine build the Poisson loader (re-wrapping changes the sample rate)"
            )
        elif isinstance(sampler, WeightedRandomSampler):
            problems.append(
                "WeightedRandomSampler: Opacus replaces it with uniform Poisson sampling and "
                "derives the sample rate from its length, so the recorded epsilon is wrong "
                "(opacus#813); re-weight the loss instead of the sampler"
            )
        elif not isinstance(sampler, SequentialSampler | RandomSampler):
            problems.append(
                f"sampler {type(sampler).__name__} is not supported: DP-SGD accounting assumes "
                "Poisson sampling of every record with the same probability"
            )
        elif isinstance(sampler, RandomSampler) and (
            sampler.replacement or sampler.num_samples != len(dataset)
        ):
            problems.append(
                "RandomSampler with replacement or num_samples != len(dataset) changes the "
                "loader length Opacus derives q from"
            )
        if data.batch_sampler is None:
            problems.append("the loader has batch_size=None; per-sample processing needs batches")
        elif type(data.batch_sampler) is not BatchSampler and not isinstance(data, DPDataLoader):
            problems.append(
                f"custom batch sampler {type(data.batch_sampler).__name__} is not Poisson sampling"
            )
        if data.drop_last:
            problems.append("drop_last=True changes len(loader) and hence the recorded q")
        if data.batch_size is not None and data.batch_size != batch_size:
            problems.append(
                f"loader batch size {data.batch_size} differs from the plan's {batch_size}"
            )
    if isinstance(dataset, IterableDataset):
        problems.append("iterable datasets cannot be Poisson-sampled; use a map-style dataset")
    else:
        try:
            n = len(dataset)
        except TypeError:
            problems.append("the dataset has no len(); Poisson sampling needs a known size")
        else:
            if n < 1:
                problems.append("the dataset is empty")
    return problems


def validate_training_setup(
    *,
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    batch_size: int,
    criterion: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    raise_if_error: bool = True,
) -> list[str]:
    """Collect every reason this setup would break DP-SGD accounting (Opacus validator style).

    Returns the list of problems (empty when fine); with ``raise_if_error`` raises
    ``UnsupportedTrainingSetup`` naming all of them instead.
    """
    problems = _model_problems(model) + _data_problems(data, batch_size=batch_size)
    if grad_sample_mode not in SUPPORTED_GRAD_SAMPLE_MODES:
        why = f" ({_MODE_REFUSALS[grad_sample_mode]})" if grad_sample_mode in _MODE_REFUSALS else ""
        problems.append(
            f"grad_sample_mode {grad_sample_mode!r} is not supported{why}; "
            f"use one of {SUPPORTED_GRAD_SAMPLE_MODES}"
        )
    reduction = getattr(criterion, "reduction", "mean")
    if reduction != "mean":
        problems.append(
            f"the loss uses reduction={reduction!r}; the engine runs Opacus with "
            "loss_reduction='mean'"
        )
    if optimizer is not None:
        params = {id(p) for p in model.parameters()}
        if any(id(p) not in params for g in optimizer.param_groups for p in g["params"]):
            problems.append("the optimizer holds parameters that are not the model's")
    if secure_mode:
        try:
            import torchcsprng  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            problems.append(
                "secure_mode needs torchcsprng, which has no release for current torch "
                "(meta-pytorch/csprng#130); secure_mode is not available in this build"
            )
    if problems and raise_if_error:
        raise UnsupportedTrainingSetup(
            "this training setup breaks DP-SGD's privacy accounting:\n- " + "\n- ".join(problems),
            hint="fix every item above; nothing was trained",
            problems=problems,
        )
    return problems


class PrivateTraining:
    """The private model, optimizer, loss and Poisson data loader for one round.

    Use ``model``, ``optimizer``, ``criterion`` and ``data_loader`` in the training loop, then
    call ``finish()`` (or use ``private_training`` which does it on exit).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Any,
        criterion: nn.Module,
        data_loader: DataLoader[Any],
        engine: Any,
        accountant: SiteAccountant,
        original_model: nn.Module,
        original_optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        grad_sample_mode: str,
        max_steps: int | None,
        sample_rate: float,
        poisson_rate: float,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.data_loader = data_loader
        self.sample_rate = sample_rate
        self.poisson_rate = poisson_rate
        self.steps_per_epoch = len(data_loader)
        self.expected_batch_size = int(optimizer.expected_batch_size)
        self._engine = engine
        self._accountant = accountant
        self._original_model = original_model
        self._noise_multiplier = noise_multiplier
        self._max_grad_norm = max_grad_norm
        self._grad_sample_mode = grad_sample_mode
        self._max_steps = max_steps
        self._updates = 0
        self._record: RoundRecord | None = None
        self._closed = False
        self._handles = [
            original_optimizer.register_step_pre_hook(self._before_update),
            original_optimizer.register_step_post_hook(self._after_update),
        ]

    def _before_update(self, *_: Any) -> None:
        if self._max_steps is not None and self._updates >= self._max_steps:
            raise AccountingError(
                f"the training loop tried to run more than {self._max_steps} steps, the number "
                "the budget gate approved for this round; the extra step was not applied",
                hint="loop over plan.local_epochs epochs of dp.data_loader, nothing more",
            )

    def _after_update(self, *_: Any) -> None:
        self._updates += 1

    @property
    def parameter_updates(self) -> int:
        """Parameter updates applied so far this round."""
        return self._updates

    @property
    def record(self) -> RoundRecord:
        """The round's record; available after ``finish()``."""
        if self._record is None:
            raise AccountingError("the round is not finished yet; call finish() first")
        return self._record

    def opacus_history(self) -> list[Triple]:
        """This round's history as Opacus's accountant counted it so far (a copy)."""
        return analysis.merge_history(self._engine.accountant.history)

    def finish(self) -> RoundRecord:
        """Record what Opacus counted into the site accountant and return the round record.

        Idempotent. Raises ``AccountingError`` (after recording, so the spend is never lost)
        when parameter updates and accounted steps disagree, or the steps used another noise
        multiplier or sample rate than set up.
        """
        if self._record is not None:
            return self._record
        history = self.opacus_history()
        steps = sum(s for _, _, s in history)
        self._accountant.extend(history)
        self._record = RoundRecord(
            history=tuple(history),
            steps=steps,
            parameter_updates=self._updates,
            noise_multiplier=self._noise_multiplier,
            sample_rate=self.sample_rate,
            max_grad_norm=self._max_grad_norm,
            mechanism=self._accountant.mechanism,
            grad_sample_mode=self._grad_sample_mode,
            poisson_rate=self.poisson_rate,
            expected_batch_size=self.expected_batch_size,
        )
        self.close()
        if steps != self._updates:
            raise AccountingError(
                f"{self._updates} parameter updates ran but Opacus accounted {steps} noisy "
                "steps: some updates were applied without DP noise or accounting",
                hint="call backward() before every optimizer.step(); do not release this model",
            )
        for sigma, q, _ in history:
            if sigma != self._noise_multiplier or q != self.sample_rate:
                raise AccountingError(
                    f"Opacus recorded (sigma={sigma}, q={q}), the engine was set up with "
                    f"(sigma={self._noise_multiplier}, q={self.sample_rate})"
                )
        return self._record

    def close(self) -> None:
        """Remove the Opacus hooks and the update counter; the model becomes a plain module."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        to_standard_module(self.model)

    def standard_module(self) -> nn.Module:
        """Return the trained plain ``nn.Module`` (hooks removed, no ``_module.`` prefix)."""
        self.close()
        return self._original_model


def make_private(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    accountant: SiteAccountant,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: GradSampleMode = "hooks",
    sampling_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    max_steps: int | None = None,
    expected_sample_rate: float | None = None,
    secure_mode: bool = False,
) -> PrivateTraining:
    """Validate the setup and wrap model, optimizer, loss and data for Poisson DP-SGD.

    ``sampling_generator`` drives Poisson sampling and ``noise_generator`` the Gaussian noise;
    pass seeded generators for reproducible tests, ``None`` for torch's default generator.
    ``expected_sample_rate`` (the plan's q) is checked against the rate Opacus will record
    before any step runs. The accountant is only written by ``PrivateTraining.finish``.
    """
    from opacus import PrivacyEngine

    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise UnsupportedTrainingSetup(f"noise multiplier must be positive, got {noise_multiplier}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise UnsupportedTrainingSetup(f"max_grad_norm must be positive, got {max_grad_norm}")
    validate_training_setup(
        model=model,
        data=data,
        batch_size=batch_size,
        criterion=criterion,
        optimizer=optimizer,
        grad_sample_mode=grad_sample_mode,
        secure_mode=secure_mode,
    )
    if secure_mode and (sampling_generator is not None or noise_generator is not None):
        raise UnsupportedTrainingSetup("secure_mode forbids seeded generators")
    dataset = data.dataset if isinstance(data, DataLoader) else data
    plain_loader = DataLoader(dataset, batch_size=batch_size, generator=sampling_generator)
    with warnings.catch_warnings():
        # Opacus warns on every engine that secure RNG is off; the README states it instead.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant.mechanism, secure_mode=secure_mode)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=plain_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        clipping="flat",
        loss_reduction="mean",
        noise_generator=noise_generator,
        grad_sample_mode=grad_sample_mode,
    )
    if len(out) == 4:
        private_model, private_opt, private_criterion, private_loader = out
    else:
        private_model, private_opt, private_loader = out
        private_criterion = criterion
    recorded_q = 1 / len(private_loader)  # exactly what make_private hooked into the accountant
    poisson_rate = float(private_loader.sample_rate)
    training = PrivateTraining(
        model=private_model,
        optimizer=private_opt,
        criterion=private_criterion,
        data_loader=private_loader,
        engine=engine,
        accountant=accountant,
        original_model=model,
        original_optimizer=optimizer,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        grad_sample_mode=grad_sample_mode,
        max_steps=max_steps,
        sample_rate=recorded_q,
        poisson_rate=poisson_rate,
    )
    if expected_sample_rate is not None and recorded_q != expected_sample_rate:
        training.close()
        raise AccountingError(
            f"Opacus will record q={recorded_q!r} but the plan assumed q={expected_sample_rate!r}",
            hint="re-plan from the dataset actually loaded (its size or the batch size changed)",
        )
    if training.expected_batch_size < 1:
        training.close()
        raise UnsupportedTrainingSetup("Opacus's expected batch size is 0; use a larger batch")
    return training


def make_private_for_plan(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    plan: RoundPlan,
    accountant: SiteAccountant,
    sampling_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """``make_private`` with every privacy number taken from the round plan the gate approved."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or len(dataset) != plan.dataset_size:  # type: ignore[arg-type]
        raise AccountingError(
            "the dataset is not the size the round plan was made for",
            hint="re-plan with privacy.plan_round(policy, dataset_size=len(dataset))",
        )
    if accountant.mechanism != plan.accountant:
        raise AccountingError(
            f"accountant is {accountant.mechanism!r}, plan uses {plan.accountant!r}"
        )
    return make_private(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        data=data,
        accountant=accountant,
        batch_size=plan.batch_size,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        grad_sample_mode=plan.grad_sample_mode,
        sampling_generator=sampling_generator,
        noise_generator=noise_generator,
        max_steps=plan.steps_per_round,
        expected_sample_rate=plan.sample_rate,
    )


@contextmanager
def private_training(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    plan: RoundPlan,
    accountant: SiteAccountant,
    sampling_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> Iterator[PrivateTraining]:
    """Context manager around ``make_private_for_plan``; records the round on exit.

    Steps that ran are recorded even when the loop raises (spent budget is never forgotten);
    the original exception propagates. After exit, ``standard_module()`` is the plain model.
    """
    training = make_private_for_plan(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        data=data,
        plan=plan,
        accountant=accountant,
        sampling_generator=sampling_generator,
        noise_generator=noise_generator,
    )
    try:
        yield training
    except BaseException:
        with suppress(AccountingError):  # the loop's own exception is the one to report
            training.finish()
        raise
    training.finish()


def to_standard_module(model: nn.Module) -> nn.Module:
    """Return the plain module inside an Opacus wrapper (hooks removed), or ``model`` itself."""
    from opacus.grad_sample import AbstractGradSampleModule

    if isinstance(model, AbstractGradSampleModule):
        return model.to_standard_module()
    return model


def standard_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the plain module's state dict, detached, with any ``_module.`` prefix removed."""
    return strip_wrapper_prefix(to_standard_module(model).state_dict())


def strip_wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove Opacus's ``_module.`` key prefix (e.g. from a wrapped model's state dict)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIX):
            key = key[len(WRAPPER_PREFIX) :]
        out[key] = value.detach()
    return out


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """Return a SHA-256 hex digest over the dtypes, shapes and bytes of ``tensors``.

    A convenience for the ledger's dataset fingerprint and model hashes; any stable digest the
    shell prefers (e.g. of the safetensors file) works as well.
    """
    h = hashlib.sha256()
    for t in tensors:
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}|{tuple(c.shape)}|".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def dataset_fingerprint(dataset: TensorDataset) -> str:
    """Return ``tensor_fingerprint`` of a ``TensorDataset``'s tensors (order matters)."""
    return tensor_fingerprint(*dataset.tensors)


def model_fingerprint(model: nn.Module) -> str:
    """Return a SHA-256 hex digest of a module's state dict (sorted keys, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for key, value in sorted(standard_state_dict(model).items()):
        h.update(key.encode() + b"\x00")
        h.update(tensor_fingerprint(value).encode())
    return h.hexdigest()
